"""Human-readable segment profiles: the centre in the features' own units, the
traits that set a segment apart from the population, and a generated name.

The model works in standardised space, so a centre's coordinates *are* z-scores
against the population: the largest ones are what makes the segment distinct.

Examples
--------
>>> from models.features import FEATURE_NAMES
>>> z = [0.0] * len(FEATURE_NAMES)
>>> z[FEATURE_NAMES.index("orders")] = 2.0
>>> z[FEATURE_NAMES.index("mobile_share")] = 1.2
>>> z[FEATURE_NAMES.index("spend")] = 1.5
>>> name_segment(z)
'Frequent buyers, big spenders, mobile-first'
>>> name_segment([0.0] * len(FEATURE_NAMES))
'Typical customers'
"""

from __future__ import annotations

import functools
from typing import Any

from models.features import FEATURE_NAMES, FEATURES, from_model_space

# (feature, direction) -> phrase; only features whose phrase reads well on its own.
_PHRASES: dict[tuple[str, int], str] = {
    ("orders", 1): "frequent buyers",
    ("spend", 1): "big spenders",
    ("avg_order_value", 1): "premium baskets",
    ("avg_order_value", -1): "small baskets",
    ("days_since_purchase", 1): "lapsing",
    ("days_since_purchase", -1): "recent buyers",
    ("views", 1): "heavy browsers",
    ("views", -1): "light visitors",
    ("searches", 1): "deal searchers",
    ("carts", 1): "cart fillers",
    ("cart_abandonment", 1): "cart abandoners",
    ("sessions", 1): "regular visitors",
    ("mobile_share", 1): "mobile-first",
    ("mobile_share", -1): "desktop users",
    ("evening_share", 1): "evening shoppers",
    ("paid_social_share", 1): "paid & social traffic",
    ("email_direct_share", 1): "email & direct loyal",
    ("tenure_days", 1): "long-standing",
    ("tenure_days", -1): "new visitors",
    ("age", 1): "older",
    ("age", -1): "young",
    ("income", 1): "high income",
    ("income", -1): "lower income",
    ("household_size", 1): "families",
}
MIN_Z = 0.5
"""A trait sets a segment apart when its centre is this many standard deviations off."""
NO_PURCHASE = "no purchase yet"
"""Said instead of "lapsing" of those who never bought: their days since purchase are high
because there was none (the feature reads 90 for never), and "We miss you" would greet a
brand-new visitor."""
_DAYS = FEATURE_NAMES.index("days_since_purchase")


def _phrase(i: int, direction: int, buyers: bool) -> str | None:
    phrase = _PHRASES.get((FEATURE_NAMES[i], direction))
    if not buyers and phrase == "small baskets":
        return None  # no basket at all: the average order value of no order reads 0
    return NO_PURCHASE if phrase == "lapsing" and not buyers else phrase


def distinguishing_traits(z: list[float], most: int = 5) -> list[dict[str, Any]]:
    """The features farthest from the population mean, strongest first."""
    order = sorted(range(len(z)), key=lambda i: -abs(z[i]))
    out = []
    for i in order[:most]:
        if abs(z[i]) < MIN_Z:
            break
        out.append({
            "feature": FEATURE_NAMES[i],
            "label": FEATURES[i].label,
            "direction": "high" if z[i] > 0 else "low",
            "z": round(z[i], 2),
        })
    return out


def name_segment(z: list[float], words: int = 3, buyers: bool = True) -> str:
    """A short name from the strongest traits that have a phrase; ``buyers``: whether the
    segment's typical customer has bought (else "no purchase yet" for "lapsing").

    >>> z = [0.0] * len(FEATURE_NAMES); z[_DAYS] = 1.2
    >>> name_segment(z), name_segment(z, buyers=False)
    ('Lapsing', 'No purchase yet')
    >>> z[FEATURE_NAMES.index("avg_order_value")] = -0.9
    >>> name_segment(z), name_segment(z, buyers=False)
    ('Lapsing, small baskets', 'No purchase yet')
    """
    phrases: list[str] = []
    for i in sorted(range(len(z)), key=lambda i: -abs(z[i])):
        if abs(z[i]) < MIN_Z or len(phrases) == words:
            break
        phrase = _phrase(i, 1 if z[i] > 0 else -1, buyers)
        if phrase and phrase not in phrases:
            phrases.append(phrase)
    if not phrases:
        return "Typical customers"
    text = ", ".join(phrases)
    return text[0].upper() + text[1:]


_TRAIT_OF = {phrase: (FEATURE_NAMES.index(f), d) for (f, d), phrase in _PHRASES.items()}
_TRAIT_OF[NO_PURCHASE] = (_DAYS, 1)
KEEP_Z = MIN_Z / 2
"""A name's trait still holds while the centre is this many standard deviations off in its
direction (a trait enters a name at :data:`MIN_Z`): names do not flip at the threshold."""


def name_holds(name: str, z: list[float], buyers: bool = True) -> bool:
    """True while every trait ``name`` states still describes the centre ``z`` (by at least
    :data:`KEEP_Z`) and the segment still has (``buyers``) or lacks purchases as the name
    says; "Typical customers" holds while no trait reaches twice :data:`MIN_Z`.

    >>> z = [0.0] * len(FEATURE_NAMES); z[FEATURE_NAMES.index("orders")] = 0.3
    >>> name_holds("Frequent buyers", z), name_holds("Frequent buyers, lapsing", z)
    (True, False)
    >>> name_holds("Typical customers", z), name_holds("Typical customers (2)", z)
    (True, True)
    """
    base = name.split(" (")[0]
    if base == "Typical customers":
        return all(abs(v) < 2 * MIN_Z for v in z)
    for phrase in base.lower().split(", "):
        trait = _TRAIT_OF.get(phrase)
        if trait is None or z[trait[0]] * trait[1] < KEEP_Z:
            return False
        if phrase == ("lapsing" if not buyers else NO_PURCHASE) or (
                phrase == "small baskets" and not buyers):
            return False
    return True


def stable_names(old: dict[str, str], fresh: dict[str, str],
                 centres: dict[str, list[float]],
                 buyers: dict[str, bool] | None = None) -> dict[str, str]:
    """Names by segment id: a segment keeps its old name while the name still describes its
    centre (:func:`name_holds`), so a name changes only when the segment's profile
    materially changes; active segments never share a name (:func:`unique_names`).

    >>> z = [0.0] * len(FEATURE_NAMES)
    >>> z[FEATURE_NAMES.index("orders")], z[FEATURE_NAMES.index("spend")] = 0.4, 0.9
    >>> stable_names({"s0": "Frequent buyers, big spenders"},
    ...              {"s0": "Big spenders", "s4": "Lapsing"}, {"s0": z, "s4": z})
    {'s0': 'Frequent buyers, big spenders', 's4': 'Lapsing'}
    >>> z[FEATURE_NAMES.index("orders")] = 0.1
    >>> stable_names({"s0": "Frequent buyers, big spenders"}, {"s0": "Big spenders"},
    ...              {"s0": z})
    {'s0': 'Big spenders'}
    """
    out = []
    for sid, name in fresh.items():
        prev = old.get(sid, "")
        keep = bool(prev) and name_holds(prev, centres[sid], (buyers or {}).get(sid, True))
        out.append(prev.split(" (")[0] if keep else name.split(" (")[0])
    return dict(zip(fresh, unique_names(out), strict=True))


def customer_explanation(z: list[float], centre: list[float], name: str = "",
                         most: int = 3, buyer: bool = True) -> str:
    """The customer's own traits that put them in the segment: first those its ``name``
    states, then the others that set the segment apart, in the order of the segment's
    profile (strongest first), each only when the customer shares it.

    >>> z = [0.0] * len(FEATURE_NAMES); c = [0.0] * len(FEATURE_NAMES)
    >>> z[FEATURE_NAMES.index("orders")], c[FEATURE_NAMES.index("orders")] = 2.5, 1.5
    >>> z[FEATURE_NAMES.index("spend")], c[FEATURE_NAMES.index("spend")] = 0.6, 2.0
    >>> customer_explanation(z, c, "Big spenders")
    'big spenders, frequent buyers'
    """
    phrases = [_phrase(i, d, buyer) or p for p, i, d in _name_terms(name)
               if z[i] * d >= KEEP_Z]
    for i, ci, to_buyer, to_other in _centre_terms(tuple(centre)):
        if len(phrases) >= most:  # only the first ``most`` are given
            break
        zi = z[i]
        phrase = to_buyer if buyer else to_other
        if phrase and zi * ci > 0 and abs(zi) >= MIN_Z and phrase not in phrases:
            phrases.append(phrase)
    phrases = phrases[:most]
    return ", ".join(phrases) if phrases else "close to the segment's typical customer"


# Every segment change is explained (per customer), against a handful of centres and names
# per model: their parts are worked out once, not per customer.
@functools.lru_cache(maxsize=256)
def _name_terms(name: str) -> tuple[tuple[str, int, int], ...]:
    """The phrases of a segment name that name a trait: (phrase, feature, direction)."""
    return tuple((p, *t) for p in name.split(" (")[0].lower().split(", ")
                 if (t := _TRAIT_OF.get(p)))


@functools.lru_cache(maxsize=256)
def _centre_terms(centre: tuple[float, ...]
                  ) -> tuple[tuple[int, float, str | None, str | None], ...]:
    """A centre's features that set it apart, strongest first: (feature, its value, the
    phrase for a buyer, for a customer without a purchase)."""
    out = []
    for i in sorted(range(len(centre)), key=lambda i: -abs(centre[i])):
        ci = centre[i]
        if abs(ci) < MIN_Z:
            break
        sign = 1 if ci > 0 else -1
        out.append((i, ci, _phrase(i, sign, True), _phrase(i, sign, False)))
    return tuple(out)


def unique_names(names: list[str]) -> list[str]:
    """Disambiguate equal names with a counter.

    >>> unique_names(["A", "B", "A"])
    ['A', 'B', 'A (2)']
    """
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n} ({seen[n]})")
    return out


def build_profiles(
    ids: list[str],
    centres_scaled: list[list[float]],
    centres_model_space: list[list[float]],
    names: dict[str, str],
    sizes: dict[str, int],
    previous: dict[str, dict[str, Any]],
    model_version: int,
    now_ms: int,
    criterion: dict[str, Any] | None = None,
    lifecycle: list[dict[str, Any]] | None = None,
    centres: dict[str, tuple[list[float], list[float]]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Profiles keyed by segment id, keeping ``created_at`` and each segment's lifecycle.

    ``names`` are the names the assignments carry (:attr:`models.core.Segmenter.names`), so
    a profile and a customer's ``segment_name`` always agree. Segments no longer in ``ids``
    keep their last profile, marked ``"status": "retired"`` (ids are never reused). Every
    profile carries the model's criterion for the number of segments.

    >>> p = build_profiles(["s0"], [[0.0] * 18], [[0.0] * 18], {"s0": "Typical customers"},
    ...                    {}, {}, 3, 1000, {"name": "davies_bouldin", "value": 0.9},
    ...                    [{"event": "born", "segment": "s0", "model_version": 3}])
    >>> p["s0"]["status"], p["s0"]["lifecycle"][0]["event"], p["s0"]["criterion"]["value"]
    ('active', 'born', 0.9)

    A segment born and merged away between two publications still gets a (retired) profile,
    with the centre it had when born (``centres``), so every id a customer was ever given has
    one:

    >>> q = build_profiles(["s0"], [[0.0] * 18], [[0.0] * 18], {"s0": "Typical customers"},
    ...                    {}, p, 4, 2000, None,
    ...                    [{"event": "split", "segment": "s1", "from": "s0", "name": "Young"},
    ...                     {"event": "merged", "segment": "s1", "into": "s0"}],
    ...                    {"s1": ([0.0] * 18, [0.0] * 18)})
    >>> q["s1"]["status"], q["s1"]["name"], [e["event"] for e in q["s1"]["lifecycle"]]
    ('retired', 'Young', ['split', 'merged'])
    >>> len(q["s1"]["centre"]) == len(q["s0"]["centre"])
    True
    """
    events: dict[str, list[dict[str, Any]]] = {}
    for e in lifecycle or []:
        events.setdefault(e["segment"], []).append(e)
        for other in (e.get("from"), e.get("into")):
            if other:
                events.setdefault(other, []).append(e)
    profiles = {}
    for sid, z, m in zip(ids, centres_scaled, centres_model_space, strict=True):
        units = from_model_space(m)
        prev = previous.get(sid, {})
        profiles[sid] = {
            "id": sid,
            "name": names.get(sid, sid),
            "status": "active",
            "size": int(sizes.get(sid, 0)),
            "centre": {n: round(v, 3) for n, v in zip(FEATURE_NAMES, units, strict=True)},
            "traits": distinguishing_traits(z),
            "model_version": model_version,
            "criterion": criterion or {},
            "lifecycle": (prev.get("lifecycle", []) + events.get(sid, []))[-20:],
            "created_at": prev.get("created_at", now_ms),
            "updated_at": now_ms,
        }
    for sid, prev in previous.items():
        if sid not in profiles:
            was_active = prev.get("status", "active") == "active"
            profiles[sid] = {
                **prev, "status": "retired", "size": int(sizes.get(sid, 0)),
                "lifecycle": (prev.get("lifecycle", []) + events.get(sid, []))[-20:],
                "retired_at": prev.get("retired_at", now_ms) if not was_active else now_ms,
            }
    for sid, evs in events.items():  # born and ended between two publications
        if sid not in profiles:
            z, m = (centres or {}).get(sid, ([], []))
            profiles[sid] = {
                "id": sid, "name": next((e.get("name") for e in evs if e["segment"] == sid
                                         and e.get("name")), sid),
                "status": "retired", "size": int(sizes.get(sid, 0)),
                "centre": {n: round(v, 3) for n, v in
                           zip(FEATURE_NAMES, from_model_space(m) if m else [], strict=False)},
                "traits": distinguishing_traits(z) if z else [],
                "model_version": model_version, "criterion": criterion or {},
                "lifecycle": evs[-20:], "created_at": now_ms, "updated_at": now_ms,
                "retired_at": now_ms,
            }
    return profiles
