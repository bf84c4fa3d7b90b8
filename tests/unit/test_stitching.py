"""The stitching protocol's steps (models/stitching.py) played between two workers, with every
control message delivered once, then with each one delivered twice (a worker killed between
producing and committing): the customer ends byte for byte the same, equal to a customer
who received every event directly."""

from __future__ import annotations

import random

import orjson
import pytest

from models.events import Event, parse_event
from models.features import update
from models.identity import Link, Merge
from models.state import CustomerState
from models.stitching import LinkRecord, forward, on_event, on_link, on_merge

DAY, HALF_LIFE, LATENESS = 86_400_000, 7 * 86_400_000, 86_400_000
A, C = "ck-3f9a", "cust-42"
TYPES = ("page_view", "product_view", "add_to_cart", "purchase", "search")


def raw(rng: random.Random, n: int, ids: dict[str, str], start: int, step: int
        ) -> list[bytes]:
    out = []
    for i in range(n):
        etype = rng.choice(TYPES)
        props = {"amount": round(rng.uniform(5, 90), 2)} if etype == "purchase" else {}
        out.append(orjson.dumps({"event_id": f"{next(iter(ids.values()))}-{start + i}",
                                 **ids, "type": etype, "timestamp": start + i * step,
                                 "properties": {**props, "device": "mobile"}}))
    return out


class World:
    """Two workers' customers, and the control messages as the topic delivers them."""

    def __init__(self, dup: str | None) -> None:
        self.dup = dup  # which delivery happens twice
        self.states: dict[str, CustomerState] = {}
        self.records: dict[str, LinkRecord] = {}
        self.links: dict[str, int] = {}

    def state(self, cid: str) -> CustomerState:
        return self.states.setdefault(cid, CustomerState(cid))

    def times(self, step: str) -> int:
        return 2 if self.dup == step else 1

    def event(self, value: bytes, key: str) -> None:
        for _ in range(self.times("event")):
            if key in self.records and (fwd := forward(value, self.records[key])):
                for _ in range(self.times("forward")):
                    self.event(fwd[1], fwd[0].decode())
                continue
            ev = parse_event(value, key.encode())
            update(self.state(key), ev, HALF_LIFE, LATENESS)
            if (link := on_event(ev)) is not None:
                for _ in range(self.times("link")):
                    record, merged = on_link(link, self.states.get(link.anonymous_id),
                                             self.records.get(link.anonymous_id))
                    assert record is not None
                    self.records[link.anonymous_id] = record
                    if merged is not None:
                        for _ in range(self.times("merge")):
                            self.merge(merged)

    def merge(self, msg: Merge) -> None:
        # over the wire: what the customer's worker decodes is bytes, not the object
        msg = Merge(msg.link, bytes(msg.snapshot))
        on_merge(self.state(msg.link.customer_id), msg, self.links, HALF_LIFE, LATENESS)


def journey(seed: int) -> tuple[list[tuple[bytes, str]], list[bytes], int]:
    rng = random.Random(seed)
    t0 = 1767225600000
    before = raw(rng, rng.randrange(3, 30), {"anonymous_id": A}, t0, 60_000)
    identify = orjson.dumps({"event_id": "login-1", "customer_id": C, "anonymous_id": A,
                             "type": "identify", "timestamp": t0 + DAY,
                             "traits": {"age": 34}})
    own = raw(rng, rng.randrange(0, 10), {"customer_id": C}, t0 - 3 * DAY, 3_600_000)
    after = raw(rng, rng.randrange(1, 20), {"anonymous_id": A}, t0 + DAY + 1000, 60_000)
    later = raw(rng, 3, {"customer_id": C}, t0 + 2 * DAY, 60_000)
    ordered = ([(v, A) for v in before] + [(v, C) for v in own] + [(identify, C)]
               + [(v, A) for v in after] + [(v, C) for v in later])
    return ordered, before + own + [identify] + after + later, len(before)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("dup", [None, "event", "link", "merge", "forward"])
def test_each_redelivery_gives_the_uninterrupted_customer(seed: int, dup: str | None) -> None:
    ordered, everything, n_before = journey(seed)
    clean, crashed = World(None), World(dup)
    for value, key in ordered:
        clean.event(value, key)
        crashed.event(value, key)
    assert crashed.state(C).to_bytes() == clean.state(C).to_bytes()
    assert crashed.links == clean.links == {A: 1767225600000 + DAY}
    # and the uninterrupted one is the customer who got every event directly
    direct = CustomerState(C)
    for value in sorted(everything, key=lambda v: orjson.loads(v)["timestamp"]):
        obj = orjson.loads(value)
        obj["customer_id"] = C
        update(direct, parse_event(orjson.dumps(obj), None), HALF_LIFE, LATENESS)
    got = clean.state(C)
    for name in ("events_total", "orders_total", "first_ts", "last_ts", "age", "device"):
        assert getattr(got, name) == getattr(direct, name), name
    assert got.spend_total == pytest.approx(direct.spend_total, rel=1e-12)
    assert got.counters == pytest.approx(direct.counters, rel=1e-9)
    # A's history went once; the events after the login never reached A's profile
    assert clean.state(A).events_total == crashed.state(A).events_total == n_before


def test_a_newer_login_elsewhere_moves_later_events_not_history() -> None:
    w = World(None)
    t0 = 1767225600000
    for i in range(3):
        w.event(orjson.dumps({"event_id": f"pv{i}", "anonymous_id": A, "type": "page_view",
                              "timestamp": t0 + i}), A)
    first = orjson.dumps({"event_id": "login-c", "customer_id": C, "anonymous_id": A,
                          "type": "identify", "timestamp": t0 + 10})
    w.event(first, C)
    second = orjson.dumps({"event_id": "login-d", "customer_id": "cust-7", "anonymous_id": A,
                           "type": "identify", "timestamp": t0 + 20})
    w.event(second, "cust-7")
    w.event(first, C)  # the old link again, redelivered late: the newer one stands
    w.event(orjson.dumps({"event_id": "pv9", "anonymous_id": A, "type": "page_view",
                          "timestamp": t0 + 30}), A)
    assert w.records[A].customer_id == "cust-7"
    assert (w.state(C).events_total, w.state("cust-7").events_total) == (4, 2)


def test_the_bound_drops_the_oldest_link() -> None:
    customer, links = CustomerState(C), {}
    dropped = []
    for i in range(10):
        update(customer, Event(f"login-{i}", C, "identify", 1000 + i, 9), HALF_LIFE, LATENESS)
        _, gone = on_merge(customer, Merge(Link(C, f"dev-{i}", f"login-{i}", 1000 + i), b""),
                           links, HALF_LIFE, LATENESS, bound=8)
        dropped += gone
    assert dropped == ["dev-0", "dev-1"] and len(links) == 8
