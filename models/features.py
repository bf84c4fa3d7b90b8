"""Live per-customer features with exponential decay in event time.

A :class:`CustomerState` holds decayed counters (halved every ``half_life_ms``
of *event* time, never wall-clock time) plus lifetime totals, habits and
traits. :func:`update` folds one event in; :func:`vector` turns a state into
the model's numeric feature vector (:data:`FEATURES`).

Examples
--------
>>> from models.events import Event, event_id_hash
>>> day = 86_400_000
>>> s = CustomerState("c1")
>>> update(s, Event("e1", "c1", "purchase", 10 * day, 20, amount=100.0), half_life_ms=7 * day)
True
>>> update(s, Event("e2", "c1", "page_view", 17 * day, 9), half_life_ms=7 * day)
True
>>> round(s.counters[PURCHASES], 3)   # one purchase, one half-life ago
0.5
>>> update(s, Event("e2", "c1", "page_view", 17 * day, 9), half_life_ms=7 * day)  # same id
False
"""

from __future__ import annotations

import hashlib
import math
import struct
import sys
from array import array
from dataclasses import dataclass

import numpy as np
import orjson

from models.events import Event, event_id_hash

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
N_COUNTERS = 16

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
STATE_SCHEMA = 2
"""Version of :meth:`CustomerState.to_bytes` (1: all JSON; 2: JSON head + packed numbers)."""
_COUNTERS = struct.Struct(f"<{N_COUNTERS}d")
_BIG_ENDIAN = sys.byteorder == "big"  # the packed ids are little-endian everywhere
_ID = struct.Struct("=Q")  # one recent id as CustomerState.recent_ids holds it in memory


@dataclass(frozen=True, slots=True)
class Feature:
    """One model feature: how it is shown to people and how the model sees it."""

    name: str
    """Machine name (used in profiles and the model checkpoint)."""
    label: str
    """Human-readable description with its unit."""
    log: bool
    """True when the model sees ``log1p(value)`` (heavy-tailed counts and money)."""


FEATURES: tuple[Feature, ...] = (
    Feature("days_since_purchase", "days since last purchase (90 = never or long ago)", False),
    Feature("orders", "purchases in the recent window (decayed)", True),
    Feature("spend", "spend in the recent window (decayed, currency units)", True),
    Feature("lifetime_orders", "purchases since first seen", True),
    Feature("avg_order_value", "average order value (currency units)", True),
    Feature("views", "page and product views in the recent window (decayed)", True),
    Feature("searches", "searches in the recent window (decayed)", True),
    Feature("carts", "add-to-carts in the recent window (decayed)", True),
    Feature("cart_abandonment", "share of carts not followed by a purchase", False),
    Feature("sessions", "sessions in the recent window (decayed)", True),
    Feature("mobile_share", "share of activity on mobile", False),
    Feature("evening_share", "share of activity 18:00-24:00 local time", False),
    Feature("paid_social_share", "share of activity from paid or social channels", False),
    Feature("email_direct_share", "share of activity from email or direct visits", False),
    Feature("tenure_days", "days since first seen (capped at 180)", False),
    Feature("age", "age in years (40 when unknown)", False),
    Feature("income", "yearly income (50000 when unknown)", True),
    Feature("household_size", "household size (2.5 when unknown)", False),
)
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
LOG_MASK: tuple[bool, ...] = tuple(f.log for f in FEATURES)
# Changing FEATURES changes this id, so old checkpoints are refused rather than misread.
FEATURE_SCHEMA = hashlib.sha256(
    repr([(f.name, f.log) for f in FEATURES]).encode()
).hexdigest()[:12]

# Imputed when a trait is unknown: population-typical values keep the unknowns near the middle.
DEFAULT_AGE, DEFAULT_INCOME, DEFAULT_HOUSEHOLD = 40.0, 50_000.0, 2.5
RECENCY_CAP_DAYS, TENURE_CAP_DAYS = 90.0, 180.0


class CustomerState:
    """Everything Segmenter knows about one customer; mutable, owned by one partition."""

    __slots__ = (
        "customer_id", "partition", "offset", "first_ts", "last_ts", "last_purchase_ts",
        "counters", "orders_total", "spend_total", "categories", "country", "region",
        "age", "income", "household", "gender", "recent_ids",
        # current assignment, held in memory only (Redis holds it in the customer hash)
        "segment", "confidence", "model_version", "last_event_id",
    )

    def __init__(self, customer_id: str) -> None:
        self.customer_id = customer_id
        self.partition = -1  # source partition of the last applied event
        self.offset = -1  # its offset: a redelivered message at or below it is skipped
        self.first_ts = 0
        self.last_ts = 0
        self.last_purchase_ts = 0
        self.counters = [0.0] * N_COUNTERS
        self.orders_total = 0
        self.spend_total = 0.0
        self.categories: dict[str, float] = {}
        self.country: str | None = None
        self.region: str | None = None
        self.age: float | None = None
        self.income: float | None = None
        self.household: float | None = None
        self.gender: str | None = None
        self.recent_ids = array("Q")  # 64-bit hashes of the latest event ids, oldest first
        self.segment = ""
        self.confidence = 0.0
        self.model_version = 0
        self.last_event_id = ""

    def to_bytes(self) -> bytes:
        """Serialize compactly for Redis: a positional JSON head, a NUL, then the counters
        (float64) and the recent event-id hashes (uint64), packed little-endian. About half
        the size of all-JSON (the numbers were most of it), and exact.

        >>> s = CustomerState("c1")
        >>> s.counters[0], s.recent_ids = 2.5, array("Q", [7, 2**64 - 1])
        >>> t = CustomerState.from_bytes("c1", s.to_bytes())
        >>> t.counters[0], list(t.recent_ids), t.to_bytes() == s.to_bytes()
        (2.5, [7, 18446744073709551615], True)
        """
        head = orjson.dumps([
            STATE_SCHEMA, self.partition, self.offset, self.first_ts, self.last_ts,
            self.last_purchase_ts, self.orders_total, self.spend_total, self.categories,
            self.country, self.region, self.age, self.income, self.household, self.gender,
        ])
        ids = self.recent_ids
        if _BIG_ENDIAN:
            ids = array("Q", ids)
            ids.byteswap()
        return b"%s\x00%s%s" % (head, _COUNTERS.pack(*self.counters), ids.tobytes())

    @classmethod
    def from_bytes(cls, customer_id: str, blob: bytes) -> CustomerState:
        """Inverse of :meth:`to_bytes` (also reads schema 1, all JSON)."""
        s = cls(customer_id)
        if blob[:3] == b"[1,":
            data = orjson.loads(blob)
            (_, s.partition, s.offset, s.first_ts, s.last_ts, s.last_purchase_ts, s.counters,
             s.orders_total, s.spend_total, s.categories, s.country, s.region, s.age,
             s.income, s.household, s.gender, ids) = data
            s.recent_ids = array("Q", ids)
            return s
        cut = blob.find(b"\x00")  # JSON never holds a raw NUL: the first one ends the head
        head = orjson.loads(blob[:cut]) if cut > 0 else None
        if not head or head[0] != STATE_SCHEMA:
            raise ValueError(f"customer state schema {head and head[0]} is not {STATE_SCHEMA}")
        (_, s.partition, s.offset, s.first_ts, s.last_ts, s.last_purchase_ts, s.orders_total,
         s.spend_total, s.categories, s.country, s.region, s.age, s.income, s.household,
         s.gender) = head
        end = cut + 1 + _COUNTERS.size
        s.counters = list(_COUNTERS.unpack_from(blob, cut + 1))
        s.recent_ids.frombytes(blob[end:])
        if _BIG_ENDIAN:
            s.recent_ids.byteswap()
        return s


def update(state: CustomerState, event: Event, half_life_ms: float, dedup_window: int = 32) -> bool:
    """Fold ``event`` into ``state``; return False (and change nothing) for a duplicate id."""
    h = event.id_hash or event_id_hash(event.event_id)
    ids = state.recent_ids
    if ids:
        # ``h in ids`` boxes every element as a Python int: searching the raw bytes is ~2x
        # faster (a match must start on an element boundary)
        raw, packed = ids.tobytes(), _ID.pack(h)
        at = raw.find(packed)
        while at > 0 and at & 7:
            at = raw.find(packed, at + 1)
        if at >= 0:
            return False
    ids.append(h)
    if len(ids) > dedup_window:
        del ids[: len(ids) - dedup_window]

    c = state.counters
    t = event.ts_ms
    if state.first_ts == 0 or t < state.first_ts:
        state.first_ts = t
    if t >= state.last_ts:
        factor = 2.0 ** (-(t - state.last_ts) / half_life_ms) if state.last_ts else 1.0
        if factor != 1.0:  # in place: new lists per event cost more (measured)
            for i in range(N_COUNTERS):
                c[i] *= factor
            for k in state.categories:
                state.categories[k] *= factor
        state.last_ts = t
        w = 1.0
    else:
        # A late event counts as much as it would have decayed to by now.
        w = 2.0 ** (-(state.last_ts - t) / half_life_ms)

    if event.type == "identify" and event.traits is not None:
        tr = event.traits
        state.age = tr.age if tr.age is not None else state.age
        state.income = tr.income if tr.income is not None else state.income
        state.household = tr.household_size if tr.household_size is not None else state.household
        state.gender = tr.gender if tr.gender is not None else state.gender
    idx = _TYPE_COUNTER.get(event.type)
    if idx is not None:
        c[idx] += w
    if event.type == "purchase":
        c[SPEND] += w * event.amount
        state.orders_total += 1
        state.spend_total += event.amount
        state.last_purchase_ts = max(state.last_purchase_ts, t)
    c[EVENTS] += w
    if event.local_hour >= 18:
        c[EVENING] += w
    if event.device is not None:
        c[DEVICE_SEEN] += w
        if event.device == "mobile":
            c[MOBILE] += w
    if event.channel is not None:
        c[CHANNEL_SEEN] += w
        if event.channel in ("paid", "social"):
            c[PAID_SOCIAL] += w
        elif event.channel in ("email", "direct"):
            c[EMAIL_DIRECT] += w
    if event.category is not None:
        cats = state.categories
        cats[event.category] = cats.get(event.category, 0.0) + w
        if len(cats) > MAX_CATEGORIES:
            del cats[min(cats, key=cats.__getitem__)]
    if event.country is not None:
        state.country = event.country
    if event.region is not None:
        state.region = event.region
    return True


def _share(num: float, den: float, default: float) -> float:
    return num / den if den > 1e-9 else default


def vector(
    state: CustomerState, half_life_ms: float = 30 * DAY_MS, now_ms: int | None = None
) -> list[float]:
    """Raw feature values (units of :data:`FEATURES`) as of ``now_ms`` (default: last event).

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
        _share(c[MOBILE], c[DEVICE_SEEN], 0.5),
        _share(c[EVENING], c[EVENTS], 0.25),
        _share(c[PAID_SOCIAL], c[CHANNEL_SEEN], 0.3),
        _share(c[EMAIL_DIRECT], c[CHANNEL_SEEN], 0.3),
        min((now - state.first_ts) / DAY_MS, TENURE_CAP_DAYS),
        DEFAULT_AGE if state.age is None else state.age,
        DEFAULT_INCOME if state.income is None else state.income,
        DEFAULT_HOUSEHOLD if state.household is None else state.household,
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
    """Inverse of :func:`to_model_space`, for showing centres in the features' own units."""
    return [math.expm1(v) if lg else v for v, lg in zip(values, LOG_MASK, strict=True)]
