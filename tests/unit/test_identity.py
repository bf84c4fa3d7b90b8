"""Identity stitching, the pure merge (issue #19 item 2): a customer who received an anonymous
visitor's snapshot is the customer who received all the visitor's events, once."""

from __future__ import annotations

import random

import orjson
import pytest

from models.events import Event, parse_event
from models.features import update
from models.identity import (
    LINK,
    MERGE,
    Link,
    Merge,
    add_link,
    decode,
    encode_link,
    encode_merge,
    merge,
    rekeyed,
)
from models.state import CustomerState
from models.windows import applied_event

DAY, HALF_LIFE, LATENESS = 86_400_000, 7 * 86_400_000, 86_400_000
KEEP = {"purchase": 30, "page_view": 30}
TYPES = ("page_view", "product_view", "add_to_cart", "purchase", "search", "session_start")


def events(rng: random.Random, n: int, prefix: str, start: int, span: int) -> list[Event]:
    out = []
    for i in range(n):
        etype = rng.choice(TYPES)
        out.append(Event(f"{prefix}{i}", prefix, etype, start + rng.randrange(span),
                         rng.randrange(24), rng.uniform(5, 80) if etype == "purchase" else 0.0,
                         rng.choice(("books", "games", "shoes", None)),
                         rng.choice(("mobile", "desktop")), rng.choice(("paid", "email")),
                         rng.choice(("AT", "DE"))))
    return sorted(out, key=lambda e: e.ts_ms)


def fold(state: CustomerState, evs: list[Event], max_ids: int = 128) -> CustomerState:
    for ev in evs:
        if update(state, ev, HALF_LIFE, LATENESS, max_ids) == "new":
            applied_event(state, ev, KEEP)
    return state


@pytest.mark.parametrize("seed", range(6))
def test_a_merged_profile_is_the_profile_of_all_events(seed: int) -> None:
    rng = random.Random(seed)
    anon_events = events(rng, rng.randrange(1, 40), "a", 100 * DAY, 3 * DAY)
    own = events(rng, rng.randrange(1, 40), "c", 101 * DAY, 3 * DAY)
    identify = Event("c-identify", "c", "identify", own[-1].ts_ms + 1, 10)
    own.append(identify)
    together = fold(CustomerState("c"), sorted(anon_events + own, key=lambda e: e.ts_ms))
    anon, cust = fold(CustomerState("a"), anon_events), fold(CustomerState("c"), own)
    assert merge(cust, anon, "a", identify.event_id, identify.ts_ms, HALF_LIFE,
                 LATENESS) == "new"
    for name in ("orders_total", "events_total", "first_ts", "last_ts", "last_purchase_ts",
                 "device", "channel", "country"):
        assert getattr(cust, name) == getattr(together, name), name
    assert cust.spend_total == pytest.approx(together.spend_total, rel=1e-12)
    assert cust.counters == pytest.approx(together.counters, rel=1e-9)
    assert cust.categories == pytest.approx(together.categories, rel=1e-9)
    assert cust.windows == together.windows
    assert set(together.seen_ids) <= set(cust.seen_ids)  # plus the merge's own id

    # exactly once: the merge again, and every event of either profile again, change nothing
    before = cust.to_bytes()
    assert merge(cust, anon, "a", identify.event_id, identify.ts_ms, HALF_LIFE,
                 LATENESS) == "duplicate"
    outcomes = {update(cust, ev, HALF_LIFE, LATENESS) for ev in anon_events + own}
    assert outcomes <= {"duplicate", "late"} and cust.to_bytes() == before


def test_merging_a_snapshot_from_bytes_and_an_empty_one() -> None:
    anon = fold(CustomerState("a"), events(random.Random(1), 10, "a", 50 * DAY, DAY))
    cust = fold(CustomerState("c"), events(random.Random(2), 5, "c", 50 * DAY, DAY))
    copy = CustomerState.from_bytes("c", cust.to_bytes())
    snapshot = CustomerState.from_bytes("a", anon.to_bytes())
    merge(cust, anon, "a", "link", cust.last_ts, HALF_LIFE, LATENESS)
    merge(copy, snapshot, "a", "link", copy.last_ts, HALF_LIFE, LATENESS)
    assert copy.to_bytes() == cust.to_bytes()
    empty = CustomerState("b")  # a visitor who sent nothing before logging in
    totals = (cust.events_total, cust.orders_total, cust.first_ts, list(cust.counters))
    assert merge(cust, empty, "b", "link-b", cust.last_ts, HALF_LIFE, LATENESS) == "new"
    assert (cust.events_total, cust.orders_total, cust.first_ts, list(cust.counters)) == totals


def test_seen_ids_stay_bounded_and_nothing_applies_twice() -> None:
    anon = fold(CustomerState("a"), events(random.Random(3), 30, "a", 10 * DAY, DAY // 2), 16)
    cust = fold(CustomerState("c"), events(random.Random(4), 30, "c", 10 * DAY, DAY // 2), 16)
    merge(cust, anon, "a", "link", cust.last_ts, HALF_LIFE, LATENESS, max_ids=16)
    assert len(cust.seen_ids) <= 16 and all(t >= cust.floor_ms for t in cust.seen_ms)
    before = cust.to_bytes()
    for ev in events(random.Random(3), 30, "a", 10 * DAY, DAY // 2):  # the visitor's again
        assert update(cust, ev, HALF_LIFE, LATENESS, 16) in ("duplicate", "late")
    assert cust.to_bytes() == before


def test_a_merge_behind_the_lateness_is_late() -> None:
    cust = fold(CustomerState("c"), events(random.Random(5), 5, "c", 40 * DAY, DAY))
    anon = fold(CustomerState("a"), events(random.Random(6), 5, "a", 10 * DAY, DAY))
    assert merge(cust, anon, "a", "old-link", 20 * DAY, HALF_LIFE, LATENESS) == "late"
    assert cust.events_total == 5


def test_links_are_bounded_oldest_dropped() -> None:
    links: dict[str, int] = {}
    dropped = [add_link(links, f"dev-{i}", 1000 + i, bound=3) for i in range(5)]
    assert dropped == [[], [], [], ["dev-0"], ["dev-1"]]
    assert list(links) == ["dev-2", "dev-3", "dev-4"]


def test_control_messages_round_trip_and_bad_ones_fail() -> None:
    link = Link("ü-c/1", "ck-{x}", "e-9", 1767225600000)
    assert decode(LINK, encode_link(link)) == link
    msg = Merge(link, CustomerState("ck-{x}").to_bytes())
    assert decode(MERGE, encode_merge(msg)) == msg
    with pytest.raises(ValueError, match="not a link message"):
        decode(LINK, b'{"customer_id": "c"}')
    with pytest.raises(ValueError, match="not a merge message"):
        decode(MERGE, b"\xff\x00")


def test_forwarded_events_keep_their_id() -> None:
    native = orjson.dumps({"event_id": "e1", "anonymous_id": "ck-1", "type": "page_view",
                           "timestamp": 1767225600000})
    segment = orjson.dumps({"messageId": "m1", "anonymousId": "ck-1", "userId": None,
                            "type": "page", "timestamp": "2026-01-01T00:00:00Z"})
    for value in (native, segment):
        before, after = parse_event(value, b"ck-1"), parse_event(rekeyed(value, "c-7"), b"c-7")
        assert (after.customer_id, after.anonymous_id) == ("c-7", "ck-1")
        assert (after.event_id, after.id_hash, after.type) == (
            before.event_id, before.id_hash, before.type)
