"""RFM segments (contract §2.2): recency, frequency and monetary scores 1-5 by quintiles of
the current population of buyers, and the standard named segments.

The quantile sketch
-------------------
Quintiles come from a *bucketed histogram* of the live population, as in DDSketch (Masson et
al., VLDB 2019): each buyer adds 1 to one bucket per dimension, and a change of their values
moves them from the old bucket to the new one. Unlike KLL or River's quantile statistics
(streams of values, no deletions), this follows a population whose members' values change:
a customer counted at 3 orders then 4 is counted once, at 4. It is also mergeable (counts
add up: every worker adds to one shared histogram, ``seg:rfm`` in Redis, in the same atomic
script that writes the customer) and exact under replays (a customer's buckets are computed
from the same trait fields before and after a write; a write that does not change them
changes no count).

Buckets (:func:`bucket_key`):

- recency: the hour of the last purchase (event time). The score of a customer falls as
  others buy later, without any event of theirs: recency is "as of the stream's latest event
  time", and ranking by time since the last purchase ranks by the last purchase itself;
- frequency: the number of orders, exactly up to :data:`EXACT_ORDERS`, then buckets 1% wide;
- monetary: revenue in buckets 1% wide (relative accuracy, as DDSketch).

Scores (:func:`score`): with ``q_k`` the k/5 quantile of the population (the smallest value
with at least k/5 of the buyers at or below it), a value scores ``1 + #{k : value > q_k}``
plus half (rounded down) of the boundaries it equals, so 5 is most recent / most frequent /
highest spend and equal values score alike. The half matters where many buyers share a
value and it spans several quintiles: a lone buyer, or a small population that all bought
in the same hour, ties all four boundaries and scores 3 (as a buyer compared with nobody),
not 1 ("Lost" for someone who bought a minute ago). Exact
batch quintiles under the same rule (:func:`exact_scores`) differ only for customers who
share a bucket with a quintile boundary but not its exact value (measured in
``tests/unit/test_rfm.py`` and ``scripts/rfm_agreement.py``).

The named segment comes from the recency and frequency scores (the 5x5 grid marketers
know, :data:`GRID`); the monetary score is given beside it.

Examples
--------
>>> pop = Population()
>>> for i in range(1, 11):  # ten buyers: last purchase at hour i, i orders, 10*i spent
...     pop.add(bucket_key(i * HOUR_MS, i, 10.0 * i))
>>> q = pop.quintiles()
>>> q.scores(bucket_key(10 * HOUR_MS, 10, 100.0)), q.scores(bucket_key(HOUR_MS, 1, 10.0))
((5, 5, 5), (1, 1, 1))
>>> segment_name(*q.scores(bucket_key(10 * HOUR_MS, 10, 100.0))[:2])
'Champions'
>>> pop.remove(bucket_key(HOUR_MS, 1, 10.0)); pop.size
9
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["GRID", "HOUR_MS", "Population", "Quintiles", "bucket_key", "exact_scores",
           "grid", "key_of", "score", "segment_name"]

HOUR_MS = 3_600_000
EXACT_ORDERS = 100
"""Order counts up to this are their own bucket (frequency quintiles are small integers)."""
_LOG_GAMMA = math.log(1.01)  # bucket width of frequency beyond EXACT_ORDERS and of money

GRID: dict[int, tuple[str, str, str, str, str]] = {
    # recency score -> names for frequency scores 1..5
    5: ("New Customers", "Potential Loyalists", "Potential Loyalists", "Champions",
        "Champions"),
    4: ("Promising", "Potential Loyalists", "Potential Loyalists", "Loyal Customers",
        "Loyal Customers"),
    3: ("About To Sleep", "About To Sleep", "Need Attention", "Loyal Customers",
        "Loyal Customers"),
    2: ("Hibernating", "Hibernating", "At Risk", "At Risk", "Can't Lose Them"),
    1: ("Lost", "Hibernating", "At Risk", "At Risk", "Can't Lose Them"),
}
"""The standard RFM map over recency (rows) and frequency (columns) scores."""

Key = tuple[int, int, int]
"""Bucket of recency, frequency and monetary value of one buyer."""


def bucket_key(last_purchase_ms: int, orders: int, revenue: float) -> Key:
    """Buckets of a buyer's last purchase time, order count and revenue (monotone: a
    larger value never gets a smaller bucket)."""
    f = orders if orders <= EXACT_ORDERS else \
        EXACT_ORDERS + 1 + int(math.log(orders / EXACT_ORDERS) / _LOG_GAMMA)
    m = int(math.log(1.0 + max(revenue, 0.0)) / _LOG_GAMMA)  # as the write script does
    return last_purchase_ms // HOUR_MS, f, m


def key_of(traits: Mapping[str, Any]) -> Key | None:
    """The bucket key of a customer's traits (as :func:`models.traits.from_fields` gives
    them); None without a purchase.

    >>> key_of({"orders": 2, "last_purchase": 3 * HOUR_MS, "revenue": 0.0}), key_of({})
    ((3, 2, 0), None)
    """
    if not traits.get("orders") or not traits.get("last_purchase"):
        return None
    return bucket_key(traits["last_purchase"], traits["orders"], traits.get("revenue") or 0.0)


def segment_name(r: int, f: int) -> str:
    """The named RFM segment of recency and frequency scores 1..5."""
    return GRID[r][f - 1]


def _boundaries(hist: Mapping[int, int]) -> tuple[int, ...]:
    """The buckets of the k/5 quantiles (k = 1..4) of a histogram."""
    n = sum(hist.values())
    if n <= 0:
        return ()
    out, cum, k = [], 0, 1
    for b in sorted(hist):
        cum += hist[b]
        while k <= 4 and cum * 5 >= k * n:
            out.append(b)
            k += 1
    return tuple(out)


def score(value: float, bounds: Sequence[float]) -> int:
    """``1 + #{k : value > q_k}`` for the quintile boundaries ``bounds``, plus half of the
    boundaries ``value`` ties: a value all of them equal is in the middle, not the bottom.

    >>> score(7, (2, 4, 6, 8)), score(4, (2, 4, 6, 8)), score(5, (5, 5, 5, 5))
    (4, 2, 3)
    """
    return 1 + sum(1 for q in bounds if value > q) + sum(1 for q in bounds if value == q) // 2


@dataclass(frozen=True, slots=True)
class Quintiles:
    """Quintile boundaries of a population, in buckets; empty: no buyer known yet."""

    r: tuple[int, ...] = ()
    f: tuple[int, ...] = ()
    m: tuple[int, ...] = ()
    buyers: int = 0
    """Buyers in the population they were taken from."""

    def scores(self, key: Key) -> tuple[int, int, int]:
        """Recency, frequency and monetary scores of a buyer's bucket key. A buyer scored
        before any population is known (its first purchase) is compared with nobody: 3s."""
        if not self.buyers:
            return 3, 3, 3
        return score(key[0], self.r), score(key[1], self.f), score(key[2], self.m)

    def of(self, key: Key | None) -> dict[str, int | str] | None:
        """``{"r", "f", "m", "segment"}`` as ``GET /customers/<id>`` gives it; None for a
        customer without a purchase."""
        if key is None:
            return None
        r, f, m = self.scores(key)
        return {"r": r, "f": f, "m": m, "segment": segment_name(r, f)}

    def name(self, key: Key | None) -> str:
        """The RFM segment name of a bucket key; empty without a purchase."""
        if key is None:
            return ""
        r, f, _ = self.scores(key)
        return segment_name(r, f)


@dataclass(slots=True)
class Population:
    """The bucketed histograms of the buyers (what ``seg:rfm`` holds in Redis)."""

    r: dict[int, int] = field(default_factory=dict)
    f: dict[int, int] = field(default_factory=dict)
    m: dict[int, int] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Buyers counted."""
        return sum(self.f.values())

    def add(self, key: Key, n: int = 1) -> None:
        """Count a buyer (``n=-1``: stop counting them)."""
        for hist, b in ((self.r, key[0]), (self.f, key[1]), (self.m, key[2])):
            left = hist.get(b, 0) + n
            if left:
                hist[b] = left
            else:
                hist.pop(b, None)

    def remove(self, key: Key) -> None:
        """Stop counting a buyer (their values changed, or they were erased)."""
        self.add(key, -1)

    @classmethod
    def from_fields(cls, fields: Iterable[tuple[str, int]]) -> Population:
        """From the fields of ``seg:rfm`` (``r<bucket>`` -> count, likewise ``f``, ``m``)."""
        pop = cls()
        for name, count in fields:
            hist = {"r": pop.r, "f": pop.f, "m": pop.m}.get(name[:1])
            if hist is not None and count > 0:
                hist[int(name[1:])] = count
        return pop

    def quintiles(self) -> Quintiles:
        """The current boundaries."""
        return Quintiles(_boundaries(self.r), _boundaries(self.f), _boundaries(self.m),
                         self.size)


def exact_scores(values: Sequence[float]) -> list[int]:
    """Exact batch scores of every value against the quintiles of all of them (same rule
    as the sketch, on the values themselves): the reference the sketch is measured by.

    >>> exact_scores([1, 1, 1, 2, 3, 4, 5, 6, 7, 8])
    [1, 1, 1, 2, 3, 3, 4, 4, 5, 5]
    """
    ordered, n = sorted(values), len(values)
    bounds = [ordered[math.ceil(k * n / 5) - 1] for k in range(1, 5)] if n else []
    return [score(v, bounds) for v in values]


def grid(cells: Iterable[tuple[int, int, int]], q: Quintiles) -> dict[str, Any]:
    """The RFM grid as marketers know it: buyers per recency x frequency score, each cell
    with the named segment it falls in, from the joint buckets ``(r, f, buyers)`` (what
    ``seg:rfm-grid`` holds) scored with the quintiles ``q``. Rows run from recency 5 (most
    recent) down to 1, columns from frequency 1 to 5, so Champions sit top right.

    >>> pop, joint = Population(), {}
    >>> for i in range(1, 11):
    ...     k = bucket_key(i * HOUR_MS, i, 10.0 * i)
    ...     pop.add(k); joint[k[:2]] = joint.get(k[:2], 0) + 1
    >>> g = grid(((r, f, n) for (r, f), n in joint.items()), pop.quintiles())
    >>> g["buyers"], g["rows"][0][4], g["rows"][4][0]["segment"], g["segments"]["Champions"]
    (10, {'r': 5, 'f': 5, 'segment': 'Champions', 'customers': 2}, 'Lost', 2)
    """
    counts: dict[tuple[int, int], int] = {}
    for rb, fb, n in cells:
        r, f, _ = q.scores((rb, fb, 0))
        counts[r, f] = counts.get((r, f), 0) + n
    rows = [[{"r": r, "f": f, "segment": segment_name(r, f), "customers": counts.get((r, f), 0)}
             for f in range(1, 6)] for r in range(5, 0, -1)]
    segments: dict[str, int] = {}
    for (r, f), n in counts.items():
        segments[segment_name(r, f)] = segments.get(segment_name(r, f), 0) + n
    return {"buyers": sum(counts.values()), "rows": rows, "segments": segments}
