"""Live per-customer features with exponential decay in event time.

A :class:`~models.state.CustomerState` holds decayed counters (halved every
``half_life_ms`` of *event* time, never wall-clock time) plus lifetime totals,
habits and traits. :func:`update` folds one event in; :func:`vector` turns a
state into the model's numeric feature vector (:data:`FEATURES`). A new trait
is added here: kept in the state, updated in :func:`update`, and (if the model
should see it) one more :data:`FEATURES` entry computed in :func:`vector`.

Examples
--------
>>> day = 86_400_000
>>> s = CustomerState("c1")
>>> update(s, Event("e1", "c1", "purchase", 10 * day, 20, amount=100.0), half_life_ms=7 * day)
'new'
>>> update(s, Event("e2", "c1", "page_view", 17 * day, 9), half_life_ms=7 * day)
'new'
>>> round(s.counters[PURCHASES], 3)   # one purchase, one half-life ago
0.5
>>> update(s, Event("e2", "c1", "page_view", 17 * day, 9), half_life_ms=7 * day)  # same id
'duplicate'
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from models.events import Event, event_id_hash
from models.state import MAX_IDS, N_COUNTERS, CustomerState

DAY_MS = 86_400_000

# Indexes into CustomerState.counters (all decayed).
(
    VIEWS,
    PRODUCT_VIEWS,
    SEARCHES,
    CARTS,
    REMOVES,
    CHECKOUTS,
    PURCHASES,
    SPEND,
    SESSIONS,
    EVENTS,
    MOBILE,
    DEVICE_SEEN,
    EVENING,
    PAID_SOCIAL,
    EMAIL_DIRECT,
    CHANNEL_SEEN,
) = range(16)
_TYPE_COUNTER = {
    "page_view": VIEWS,
    "product_view": PRODUCT_VIEWS,
    "search": SEARCHES,
    "add_to_cart": CARTS,
    "remove_from_cart": REMOVES,
    "checkout": CHECKOUTS,
    "purchase": PURCHASES,
    "session_start": SESSIONS,
}
MAX_CATEGORIES = 8
ALLOWED_LATENESS_MS = DAY_MS
"""Default allowed lateness (``SEGMENTER_ALLOWED_LATENESS_S``), see :mod:`models.state`."""


@dataclass(frozen=True, slots=True)
class Feature:
    """One model feature: how it is shown to people and how the model sees it."""

    name: str
    """Machine name (used in profiles and the model checkpoint)."""
    label: str
    """Human-readable description with its unit."""
    log: bool
    """True when the model sees ``log1p(value)`` (heavy-tailed counts and money)."""
    high: float = math.inf
    """The largest value the feature takes (every feature is at least 0): a centre is shown
    within its feature's range, even where averaging in model space leaves it a hair out."""


FEATURES: tuple[Feature, ...] = (
    Feature("days_since_purchase", "days since last purchase (90 = never or long ago)", False,
            90.0),
    Feature("orders", "purchases in the recent window (decayed)", True),
    Feature("spend", "spend in the recent window (decayed, currency units)", True),
    Feature("lifetime_orders", "purchases since first seen", True),
    Feature("avg_order_value", "average order value (currency units)", True),
    Feature("views", "page and product views in the recent window (decayed)", True),
    Feature("searches", "searches in the recent window (decayed)", True),
    Feature("carts", "add-to-carts in the recent window (decayed)", True),
    Feature("cart_abandonment", "share of carts not followed by a purchase", False, 1.0),
    Feature("sessions", "sessions in the recent window (decayed)", True),
    Feature("mobile_share", "share of activity on mobile (unknown without a device)", False, 1.0),
    Feature("evening_share", "share of activity 18:00-24:00 local time", False, 1.0),
    Feature("paid_social_share", "share of activity from paid or social channels (unknown "
            "without a channel)", False, 1.0),
    Feature("email_direct_share", "share of activity from email or direct visits (unknown "
            "without a channel)", False, 1.0),
    Feature("tenure_days", "days since first seen (capped at 180)", False, 180.0),
    Feature("age", "age in years", False),
    Feature("income", "yearly income", True),
    Feature("household_size", "household size", False),
)
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
LOG_MASK: tuple[bool, ...] = tuple(f.log for f in FEATURES)
UNKNOWN = math.nan
"""A feature the customer gave no signal for (no demographics, no device or channel seen).
The scaler learns each feature from the customers who have it and places the unknowns at its
mean, so a trait only 1 in 4 customers gives weighs a quarter as much as a complete one
(an imputed constant would instead stretch the few known values far out, and k-means would
spend a segment on them)."""
# Changing FEATURES (or how unknowns are given) changes this id, so old checkpoints are
# refused rather than misread.
FEATURE_SCHEMA = hashlib.sha256(
    repr([(f.name, f.log) for f in FEATURES] + ["unknown=nan"]).encode()
).hexdigest()[:12]
RECENCY_CAP_DAYS, TENURE_CAP_DAYS = 90.0, 180.0


def update(state: CustomerState, event: Event, half_life_ms: float,
           lateness_ms: int = ALLOWED_LATENESS_MS, max_ids: int = MAX_IDS) -> str:
    """Fold ``event`` into ``state``: ``'new'``; or change nothing and say why:
    ``'duplicate'`` (its id was applied before) or ``'late'`` (before the customer's
    lateness floor, :meth:`CustomerState.admit`)."""
    t = event.ts_ms
    outcome = state.admit(event.id_hash or event_id_hash(event.event_id), t, lateness_ms,
                          max_ids)
    if outcome != "new":
        return outcome
    # per event: each attribute read once into a local (this runs for every event)
    c = state.counters
    last = state.last_ts
    state.events_total += 1
    first = state.first_ts
    if first == 0 or t < first:
        state.first_ts = t
    newest = t >= last  # the last device and channel are those of the newest event
    if newest:
        if last and t != last:  # else the factor is 1.0: nothing decays
            factor = 2.0 ** (-(t - last) / half_life_ms)
            if factor != 1.0:  # in place: new lists per event cost more (measured)
                for i in range(N_COUNTERS):
                    c[i] *= factor
                cats = state.categories
                for k in cats:
                    cats[k] *= factor
        state.last_ts = t
        w = 1.0
    else:
        # A late event counts as much as it would have decayed to by now.
        w = 2.0 ** (-(last - t) / half_life_ms)

    etype = event.type
    idx = _TYPE_COUNTER.get(etype)
    if idx is not None:
        c[idx] += w
        if idx == PURCHASES:
            amount = event.amount
            c[SPEND] += w * amount
            state.orders_total += 1
            state.spend_total += amount
            if t > state.last_purchase_ts:
                state.last_purchase_ts = t
    elif etype == "identify" and event.traits is not None:
        tr = event.traits
        state.age = tr.age if tr.age is not None else state.age
        state.income = tr.income if tr.income is not None else state.income
        state.household = tr.household_size if tr.household_size is not None else state.household
        state.gender = tr.gender if tr.gender is not None else state.gender
    c[EVENTS] += w
    if event.local_hour >= 18:
        c[EVENING] += w
    device = event.device
    if device is not None:
        if newest:
            state.device = device
        c[DEVICE_SEEN] += w
        if device == "mobile":
            c[MOBILE] += w
    channel = event.channel
    if channel is not None:
        if newest:
            state.channel = channel
        c[CHANNEL_SEEN] += w
        if channel == "paid" or channel == "social":
            c[PAID_SOCIAL] += w
        elif channel == "email" or channel == "direct":
            c[EMAIL_DIRECT] += w
    category = event.category
    if category is not None:
        cats = state.categories
        cats[category] = cats.get(category, 0.0) + w
        if len(cats) > MAX_CATEGORIES:
            del cats[min(cats, key=cats.__getitem__)]
    if event.country is not None:
        state.country = event.country
    if event.region is not None:
        state.region = event.region
    return "new"


def _share(num: float, den: float) -> float:
    return num / den if den > 1e-9 else UNKNOWN


def vector(
    state: CustomerState, half_life_ms: float = 30 * DAY_MS, now_ms: int | None = None
) -> list[float]:
    """Raw feature values (units of :data:`FEATURES`) as of ``now_ms`` (default: last event);
    :data:`UNKNOWN` (NaN) where the customer gave no signal.

    Ratios do not decay; counts decay from the last event to ``now_ms``.
    """
    now = state.last_ts if now_ms is None else max(now_ms, state.last_ts)
    f = 2.0 ** (-(now - state.last_ts) / half_life_ms) if now != state.last_ts else 1.0
    c = state.counters
    recency = (
        min((now - state.last_purchase_ts) / DAY_MS, RECENCY_CAP_DAYS)
        if state.last_purchase_ts
        else RECENCY_CAP_DAYS
    )
    aov = state.spend_total / state.orders_total if state.orders_total else 0.0
    return [
        recency,
        c[PURCHASES] * f,
        c[SPEND] * f,
        float(state.orders_total),
        aov,
        (c[VIEWS] + c[PRODUCT_VIEWS]) * f,
        c[SEARCHES] * f,
        c[CARTS] * f,
        min(max(1.0 - c[PURCHASES] / c[CARTS], 0.0), 1.0) if c[CARTS] > 1e-9 else 0.0,
        c[SESSIONS] * f,
        _share(c[MOBILE], c[DEVICE_SEEN]),
        _share(c[EVENING], c[EVENTS]),
        _share(c[PAID_SOCIAL], c[CHANNEL_SEEN]),
        _share(c[EMAIL_DIRECT], c[CHANNEL_SEEN]),
        min((now - state.first_ts) / DAY_MS, TENURE_CAP_DAYS),
        UNKNOWN if state.age is None else state.age,
        UNKNOWN if state.income is None else state.income,
        UNKNOWN if state.household is None else state.household,
    ]


def to_model_space(raw: list[float]) -> list[float]:
    """Apply the per-feature transform (``log1p`` where :data:`LOG_MASK` says).

    >>> to_model_space([0.0] * len(FEATURES))[:3]
    [0.0, 0.0, 0.0]
    """
    return [math.log1p(v) if lg else v for v, lg in zip(raw, LOG_MASK, strict=True)]


_LOG_COLUMNS = [i for i, lg in enumerate(LOG_MASK) if lg]


def to_model_matrix(rows: list[list[float]]) -> np.ndarray:
    """:func:`to_model_space` for many raw vectors at once (vectorised).

    >>> to_model_matrix([[0.0] * len(FEATURES)]).shape == (1, len(FEATURES))
    True
    """
    x = np.asarray(rows, dtype=float)
    x[:, _LOG_COLUMNS] = np.log1p(x[:, _LOG_COLUMNS])
    return x


def from_model_space(values: list[float]) -> list[float]:
    """Inverse of :func:`to_model_space`, for showing centres in the features' own units
    (within each feature's range).

    >>> from_model_space([91.0, -0.01] + [0.0] * (len(FEATURES) - 2))[:2]
    [90.0, 0.0]
    >>> len(from_model_space([1e6] * len(FEATURES)))  # past exp's range: no OverflowError
    18
    """
    # a centre learned from absurd (fuzzed) amounts may sit past exp's range: e^709 is
    # already beyond any real spend, so the shown value saturates instead of raising
    return [min(max(math.expm1(min(v, _EXP_MAX)) if f.log else v, 0.0), f.high)
            for v, f in zip(values, FEATURES, strict=True)]


_EXP_MAX = 709.0  # math.expm1 raises OverflowError past ~709.78
