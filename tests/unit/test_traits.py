"""Live traits (contract §2.1) are exact: the same events give the same traits whatever the
batching, the re-sends, the redeliveries and the crashes (a crash here: the core is
rebuilt from what the writes would have left in Redis, and the events since an earlier
offset are delivered again)."""

from __future__ import annotations

import random
import zlib
from collections import Counter, defaultdict
from typing import Any

import orjson

from models.config import SegmenterConfig
from models.core import Record, Segmenter
from models.records import Assignment
from models.simulator import ShopSimulator
from models.state import CustomerState
from models.traits import TRAIT_NAMES, decode, for_api

PARTITIONS = 3


def _config() -> SegmenterConfig:
    return SegmenterConfig(min_segments=2, max_segments=3, warmup=50, update_every=400)


def _records(events: list[dict[str, Any]]) -> list[Record]:
    offsets = [0] * PARTITIONS
    out = []
    for e in events:
        key = e["customer_id"].encode()
        p = zlib.crc32(key) % PARTITIONS
        out.append(Record("events", p, offsets[p], key, orjson.dumps(e)))
        offsets[p] += 1
    return out


class Stored:
    """What Redis would hold: the latest write of each customer."""

    def __init__(self) -> None:
        self.writes: dict[str, Assignment] = {}

    def keep(self, writes: list[Assignment]) -> None:
        for a in writes:
            self.writes[a.customer_id] = a

    def states(self, ids: set[str]) -> dict[str, CustomerState]:
        return {c: CustomerState.from_bytes(c, self.writes[c].state,
                                            decode(self.writes[c].traits))
                for c in ids if c in self.writes}

    def traits(self) -> dict[str, dict[str, Any]]:
        return {c: decode(a.traits) for c, a in self.writes.items()}


def _run(records: list[Record], batch: int, stored: Stored,
         seg: Segmenter | None = None) -> Segmenter:
    seg = seg or Segmenter(_config())
    for i in range(0, len(records), batch):
        parsed = seg.parse(records[i:i + batch])
        stored.keep(seg.apply(parsed, stored.states(seg.missing(parsed))).assignments)
        stored.keep(seg.drain())
    return seg


def _history() -> list[dict[str, Any]]:
    sim = ShopSimulator(120, seed=8, days=6)
    return sorted(sim.history(), key=lambda e: e["timestamp"])


def test_traits_are_the_same_whatever_the_batching_resends_and_crashes() -> None:
    events = _history()
    records = _records(events)
    one = Stored()
    _run(records, len(records), one)
    reference = one.traits()

    # small batches, with every tenth event re-sent later (same id, new offset)
    rng = random.Random(4)
    resent = list(events)
    for e in events[::10]:
        resent.insert(min(len(resent), resent.index(e) + rng.randrange(1, 50)), e)
    small = Stored()
    _run(_records(resent), 37, small)
    assert small.traits() == reference

    # a crash after a part was written: a new core from Redis; everything since an earlier
    # offset is delivered again
    crashed = Stored()
    cut = len(records) * 2 // 3
    _run(records[:cut], 101, crashed)
    _run(records[cut // 2:], 53, crashed)
    assert crashed.traits() == reference


def test_lifetime_traits_count_every_applied_event_exactly() -> None:
    events = _history()
    stored = Stored()
    _run(_records(events), 500, stored)
    orders: Counter[str] = Counter()
    revenue: defaultdict[str, float] = defaultdict(float)
    applied: Counter[str] = Counter()
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for e, rec in zip(events, _records(events), strict=True):
        ts = Segmenter(_config()).parse([rec])[0][1].ts_ms  # type: ignore[union-attr]
        cid = e["customer_id"]
        applied[cid] += 1
        first[cid], last[cid] = min(first.get(cid, ts), ts), max(last.get(cid, ts), ts)
        if e["type"] == "purchase":
            orders[cid] += 1
            revenue[cid] += e["properties"]["amount"]
    got = stored.traits()
    assert set(got) == set(applied)
    for cid, t in got.items():
        assert t["events"] == applied[cid]
        assert t["orders"] == orders[cid]
        assert abs(t["revenue"] - revenue[cid]) < 0.006
        assert (t["first_seen"], t["last_seen"]) == (first[cid], last[cid])
        assert ("last_purchase" in t) == (orders[cid] > 0)
        api = for_api(t, None, 30 * 86_400_000)
        assert list(api) == list(TRAIT_NAMES)
        assert (api["last_purchase"] is None) == (orders[cid] == 0)


def test_state_schema_3_still_reads() -> None:
    s = CustomerState("c1")
    s.orders_total, s.events_total, s.device = 2, 9, "mobile"
    blob = s.to_bytes()
    head, rest = blob.split(b"\x00", 1)
    old = orjson.loads(head)[:17]
    old[0] = 3
    t = CustomerState.from_bytes("c1", orjson.dumps(old) + b"\x00" + rest)
    assert (t.orders_total, t.events_total, t.device) == (2, 0, None)
    assert CustomerState.from_bytes("c1", blob).to_bytes() == blob
