"""A deterministic simulator of realistic shoppers drawn from hidden personas.

Each customer follows a persona (its ground truth): how often it visits, what it
does in a session (views, searches, carts, purchases), its devices, channels,
local hours, categories and demographics. Sessions are generated in event-time
order; with ``drift`` > 0 customers change persona over time. Options shape populations
the personas alone do not: ``trait_share`` (only that share of customers ever identifies)
and ``purchase_only`` (a bare order log: purchases with an amount, nothing else).

Examples
--------
>>> sim = ShopSimulator(customers=50, seed=1, start_ms=1767225600000, days=5)
>>> events = list(sim.history())
>>> len({e["customer_id"] for e in events}) > 30, events[0]["type"]
(True, 'session_start')
>>> c = events[0]["customer_id"]
>>> mine = [e["timestamp"] for e in events if e["customer_id"] == c]
>>> mine == sorted(mine)
True
>>> sorted(set(sim.truth.values())) == sorted(p.name for p in PERSONAS)
True
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class Persona:
    """How one kind of shopper behaves."""

    name: str
    """Ground-truth label."""
    weight: float
    """Share of the population."""
    sessions_per_day: float
    """Mean visit rate."""
    views: tuple[int, int]
    """Page views per session (min, max)."""
    product_views: tuple[int, int]
    """Product views per session (min, max)."""
    searches: tuple[int, int]
    """Searches per session (min, max)."""
    p_cart: float
    """Chance that a product view ends in the cart."""
    p_buy: float
    """Chance that a session with a cart ends in a purchase."""
    amount: tuple[float, float]
    """Order amount (mean, sd)."""
    mobile: float
    """Share of sessions on mobile."""
    evening: float
    """Share of sessions between 18:00 and 24:00 local time."""
    channels: tuple[tuple[str, float], ...]
    """Channel mix."""
    categories: tuple[str, ...]
    """Preferred categories."""
    age: tuple[float, float]
    """Age (mean, sd)."""
    income: tuple[float, float]
    """Income (mean, sd)."""
    household: tuple[float, float]
    """Household size (mean, sd)."""
    p_identify: float
    """Chance the customer identifies with traits."""
    spend_tail: float = 0.0
    """0: order amounts are normal (``amount``); > 0: lognormal with ``amount``'s mean and
    this log-sd (heavy-tailed spend: a few orders many times the typical one)."""


PERSONAS: tuple[Persona, ...] = (
    Persona("bargain_hunter", 0.2, 0.45, (2, 4), (3, 7), (3, 6), 0.3, 0.3, (28, 8), 0.25, 0.15,
            (("paid", 0.5), ("social", 0.35), ("organic", 0.15)), ("fashion", "home", "beauty"),
            (33, 7), (38_000, 9_000), (2.5, 1.0), 0.7),
    Persona("loyal_big_spender", 0.15, 0.5, (1, 3), (2, 4), (0, 1), 0.55, 0.9, (230, 60), 0.1,
            0.2, (("email", 0.55), ("direct", 0.4), ("organic", 0.05)),
            ("electronics", "home", "garden"), (49, 7), (98_000, 18_000), (3.3, 1.0), 0.9),
    Persona("window_shopper", 0.2, 0.6, (6, 12), (5, 10), (1, 3), 0.02, 0.05, (40, 12), 0.4,
            0.3, (("organic", 0.75), ("referral", 0.2), ("direct", 0.05)),
            ("books", "electronics", "fashion"), (38, 10), (52_000, 14_000), (2.0, 1.0), 0.5),
    Persona("mobile_evening_browser", 0.2, 0.7, (2, 5), (2, 5), (0, 2), 0.12, 0.35, (35, 10),
            0.96, 0.88, (("social", 0.65), ("paid", 0.2), ("organic", 0.15)),
            ("fashion", "beauty", "games"), (24, 3), (31_000, 7_000), (1.4, 0.6), 0.6),
    Persona("lapsing_customer", 0.12, 0.4, (1, 3), (1, 3), (0, 1), 0.4, 0.7, (90, 25), 0.3,
            0.3, (("email", 0.3), ("organic", 0.4), ("direct", 0.3)), ("home", "books"),
            (44, 9), (60_000, 15_000), (2.6, 1.0), 0.8),
    Persona("new_visitor", 0.13, 0.0, (1, 3), (0, 2), (0, 1), 0.0, 0.0, (0, 0), 0.5, 0.3,
            (("paid", 0.5), ("referral", 0.3), ("social", 0.2)), ("fashion", "electronics"),
            (35, 12), (45_000, 15_000), (2.2, 1.0), 0.05),
)
_COUNTRIES = (("DE", 0.3), ("FR", 0.2), ("GB", 0.2), ("NL", 0.1), ("ES", 0.1), ("IT", 0.1))
# Personas a drifting customer can move into: behaviour changes, lapsing stays lapsing.
_DRIFT_TARGETS = ("bargain_hunter", "loyal_big_spender", "window_shopper",
                  "mobile_evening_browser", "lapsing_customer")


def _pick(rng: random.Random, pairs: tuple[tuple[str, float], ...]) -> str:
    return rng.choices([p[0] for p in pairs], weights=[p[1] for p in pairs])[0]


class ShopSimulator:
    """Generates events for ``customers`` shoppers over ``days`` of event time."""

    def __init__(
        self, customers: int, seed: int = 7, start_ms: int = 1_767_225_600_000,
        days: float = 30.0, drift: float = 0.0, prefix: str = "c",
        personas: tuple[Persona, ...] = PERSONAS, trait_share: float = 1.0,
        purchase_only: bool = False,
    ) -> None:
        self.rng = random.Random(seed)
        self.start_ms = start_ms
        self.end_ms = int(start_ms + days * DAY_MS)
        self.drift = drift
        self.prefix = prefix
        self.personas = personas
        self._by_name = {p.name: p for p in personas}
        self.trait_share = trait_share
        self.purchase_only = purchase_only
        self._anonymous: set[str] = set()
        self.truth: dict[str, str] = {}
        self._tz: dict[str, int] = {}
        self._last: dict[str, int] = {}
        self._heap: list[tuple[int, str]] = []
        self._n = 0
        self._seq = 0
        for _ in range(customers):
            self._add_customer()

    def _add_customer(self, at_ms: int | None = None) -> str:
        rng = self.rng
        persona = rng.choices(self.personas, weights=[p.weight for p in self.personas])[0]
        cid = f"{self.prefix}{self._n:06d}"
        self._n += 1
        self.truth[cid] = persona.name
        self._tz[cid] = rng.choice((0, 1, 1, 2))
        if self.trait_share < 1.0 and rng.random() >= self.trait_share:
            self._anonymous.add(cid)  # never identifies (drawn only then: same default stream)
        span = self.end_ms - self.start_ms
        if at_ms is not None:
            first = at_ms
        elif persona.name == "new_visitor":
            first = self.end_ms - int(rng.random() * span * 0.1)
        elif persona.name == "lapsing_customer":
            first = self.start_ms + int(rng.random() * span * 0.1)
        else:
            first = self.start_ms + int(rng.random() * span * 0.2)
        heapq.heappush(self._heap, (first, cid))
        return cid

    def _next_gap(self, cid: str, now: int) -> int | None:
        p = self._by_name[self.truth[cid]]
        if p.name == "new_visitor":
            return None if self.rng.random() < 0.6 else int(self.rng.uniform(0.01, 0.3) * DAY_MS)
        rate = p.sessions_per_day
        if p.name == "lapsing_customer" and now > self.start_ms + 0.35 * (self.end_ms -
                                                                         self.start_ms):
            rate = 0.06  # lapsed: rare short visits, no buying
        return int(self.rng.expovariate(rate) * DAY_MS) + 60_000

    def history(self) -> Iterator[dict[str, Any]]:
        """Events from ``start`` to ``end`` in time order."""
        while self._heap and self._heap[0][0] < self.end_ms:
            ts, cid = heapq.heappop(self._heap)
            yield from self._session(cid, ts)
            gap = self._next_gap(cid, ts)
            if gap is not None:
                heapq.heappush(self._heap, (max(ts + gap, self._last[cid] + 60_000), cid))

    def live(self, now_ms: int) -> list[dict[str, Any]]:
        """One session stamped ``now_ms``, of a random existing or new customer."""
        if not self.truth or self.rng.random() < 0.03:
            cid = self._add_customer(now_ms)
            self.truth[cid] = "new_visitor"
        else:
            for _ in range(4):  # busier personas visit more often
                cid = f"{self.prefix}{self.rng.randrange(self._n):06d}"
                if self.rng.random() < self._by_name[self.truth[cid]].sessions_per_day:
                    break
        return list(self._session(cid, max(now_ms, self._last.get(cid, 0) + 1000)))

    def _session(self, cid: str, ts: int) -> Iterator[dict[str, Any]]:
        rng = self.rng
        if self.drift and rng.random() < self.drift:
            self.truth[cid] = rng.choice(_DRIFT_TARGETS)
        p = self._by_name[self.truth[cid]]
        lapsed = p.name == "lapsing_customer" and ts > self.start_ms + 0.35 * (
            self.end_ms - self.start_ms)
        # Move the session into the persona's favourite hours (local time).
        tz = self._tz[cid]
        day = ts - ts % DAY_MS
        hour = rng.uniform(18, 23.9) if rng.random() < p.evening else rng.uniform(7, 17.9)
        if ts < self.end_ms:  # history: place the session in the persona's hours
            ts = max(ts, day + int((hour - tz) * 3_600_000) % DAY_MS)
        device = "mobile" if rng.random() < p.mobile else rng.choice(("desktop", "desktop",
                                                                      "tablet"))
        base = {"device": device, "channel": _pick(rng, p.channels),
                "country": _pick(rng, _COUNTRIES)}
        steps: list[tuple[str, dict[str, Any]]] = [("session_start", {})]
        if rng.random() < p.p_identify * 0.3 or (p.p_identify > rng.random() and
                                                 self._seq % 7 == 0):
            steps.append(("identify", {}))
        for _ in range(rng.randint(*p.views) if not lapsed else rng.randint(1, 2)):
            steps.append(("page_view", {}))
        if not lapsed:
            for _ in range(rng.randint(*p.searches)):
                steps.append(("search", {}))
            carted = False
            for _ in range(rng.randint(*p.product_views)):
                cat = rng.choice(p.categories)
                steps.append(("product_view", {"category": cat}))
                if rng.random() < p.p_cart:
                    steps.append(("add_to_cart", {"category": cat}))
                    carted = True
            if carted and rng.random() < p.p_buy:
                steps.append(("checkout", {}))
                if p.spend_tail > 0:  # mean-preserving lognormal
                    mu = math.log(max(p.amount[0], 1.0)) - p.spend_tail ** 2 / 2
                    amount = max(1.0, rng.lognormvariate(mu, p.spend_tail))
                else:
                    amount = max(1.0, rng.gauss(*p.amount))
                steps.append(("purchase", {"amount": round(amount, 2), "currency": "EUR",
                                           "category": rng.choice(p.categories)}))
        anonymous = cid in self._anonymous
        for etype, props in steps:
            self._seq += 1
            ts += rng.randint(5_000, 90_000)
            self._last[cid] = ts
            if (self.purchase_only and etype != "purchase") or (etype == "identify"
                                                                and anonymous):
                continue  # the same random stream, fewer events
            event: dict[str, Any] = {
                "event_id": f"e{self._seq:09d}-{cid}",
                "customer_id": cid,
                "type": etype,
                "timestamp": _iso(ts, tz),
                "properties": {**base, **props},
            }
            if self.purchase_only:
                event["properties"] = {"amount": props["amount"], "currency": "EUR"}
            elif etype == "identify":
                event["traits"] = {
                    "age": max(16, round(rng.gauss(*p.age))),
                    "income": max(0, round(rng.gauss(*p.income), -2)),
                    "household_size": max(1, round(rng.gauss(*p.household))),
                    "gender": rng.choice(("female", "male", "nonbinary")),
                    "interests": list(p.categories[:2]),
                }
            yield event


def _iso(ts_ms: int, tz_hours: int) -> str:
    """ISO-8601 with the customer's UTC offset.

    >>> _iso(1767225600000, 1)
    '2026-01-01T01:00:00.000+01:00'
    """
    from datetime import datetime, timedelta, timezone

    dt = datetime.fromtimestamp(ts_ms / 1000, tz=timezone(timedelta(hours=tz_hours)))
    return dt.isoformat(timespec="milliseconds")
