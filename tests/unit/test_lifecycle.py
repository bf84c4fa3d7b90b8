"""Segment ids and lifecycle on constructed streams (pure core, no servers)."""

from __future__ import annotations

from collections import Counter

import orjson

from models.core import Record, Segmenter, SegmenterConfig
from models.events import parse_timestamp
from models.simulator import DAY_MS, PERSONAS, ShopSimulator

START = 1_767_225_600_000
BY_NAME = {p.name: p for p in PERSONAS}
CFG = SegmenterConfig(min_segments=2, max_segments=6, warmup=300, update_every=2000,
                      refresh_every=2, active_days=10)


def personas(*names: str) -> tuple:
    return tuple(BY_NAME[n] for n in names)


def feed(seg: Segmenter, events: list[dict], offset: int) -> tuple[list, list, int]:
    events.sort(key=lambda e: e["timestamp"])
    recs = [Record("events", 0, offset + i, e["customer_id"].encode(), orjson.dumps(e))
            for i, e in enumerate(events)]
    lifecycle, assigned = [], []
    for i in range(0, len(recs), 4000):
        out = seg.apply(seg.parse(recs[i:i + 4000]), {})
        lifecycle += out.lifecycle
        assigned += out.assignments
        seg.drain()
    return lifecycle, assigned, offset + len(recs)


def history(sim: ShopSimulator) -> list[dict]:
    out = []
    for e in sim.history():  # integer timestamps sort across simulators
        e["timestamp"] = parse_timestamp(e["timestamp"])[0]
        out.append(e)
    return out


def members(seg: Segmenter, prefix: str) -> Counter[str]:
    return Counter(s.segment for c, s in seg.states.items() if c.startswith(prefix))


def test_a_new_persona_gives_a_new_segment_and_the_others_keep_their_ids() -> None:
    seg = Segmenter(CFG)
    old = ShopSimulator(900, seed=1, start_ms=START, days=40, prefix="a",
                        personas=personas("loyal_big_spender", "window_shopper"))
    events = history(old)
    first = [e for e in events if e["timestamp"] < START + 20 * DAY_MS]
    _, _, offset = feed(seg, first, 0)
    before = {p: members(seg, p) for p in ("a",)}
    ids_before = list(seg.model.ids)
    by_persona_before = {c: s.segment for c, s in seg.states.items()}
    newcomers = ShopSimulator(450, seed=2, start_ms=START + 20 * DAY_MS, days=20, prefix="n",
                              personas=personas("mobile_evening_browser"))
    rest = [e for e in events if e["timestamp"] >= START + 20 * DAY_MS] + history(newcomers)
    lifecycle, _, _ = feed(seg, rest, offset)
    seg.rescore(10**6)

    new_ids = {e["segment"] for e in lifecycle if e["event"] in ("born", "split")}
    home = members(seg, "n").most_common(1)[0][0]
    assert home in new_ids and home not in ids_before, (home, lifecycle)
    assert members(seg, "n")[home] >= 0.9 * sum(members(seg, "n").values())
    # the old personas keep their ids: each old customer's segment is one that existed before
    kept = sum(1 for c, sid in by_persona_before.items() if seg.states[c].segment == sid)
    assert kept >= 0.9 * len(by_persona_before), (kept, len(by_persona_before), before)
    assert set(ids_before) <= set(seg.model.ids)


def test_a_persona_that_disappears_retires_its_segment() -> None:
    seg = Segmenter(CFG)
    stay = ShopSimulator(900, seed=3, start_ms=START, days=45, prefix="s",
                         personas=personas("window_shopper", "mobile_evening_browser"))
    gone = ShopSimulator(450, seed=4, start_ms=START, days=15, prefix="g",
                         personas=personas("loyal_big_spender"))
    stay_events = history(stay)
    phase1 = [e for e in stay_events if e["timestamp"] < START + 15 * DAY_MS] + history(gone)
    _, _, offset = feed(seg, phase1, 0)
    their = members(seg, "g").most_common(1)[0][0]
    assert members(seg, "g")[their] >= 0.9 * sum(members(seg, "g").values())
    assert their in seg.model.ids

    phase2 = [e for e in stay_events if e["timestamp"] >= START + 15 * DAY_MS]
    lifecycle, _, _ = feed(seg, phase2, offset)
    ended = {e["segment"]: e for e in lifecycle if e["event"] in ("retired", "merged")}
    assert their in ended, lifecycle
    assert their not in seg.model.ids
    moved = seg.rescore(10**6)  # the gone customers get a live segment, without new events
    assert {a.reason for a in moved if a.customer_id.startswith("g")} == {"model_update"}
    assert all(s.segment in seg.model.ids for s in seg.states.values())


def test_customers_without_new_events_move_with_time() -> None:
    cfg = SegmenterConfig(min_segments=3, max_segments=3, warmup=300, update_every=2000)
    seg = Segmenter(cfg)
    sim = ShopSimulator(1200, seed=5, start_ms=START, days=30, prefix="t",
                        personas=personas("loyal_big_spender", "lapsing_customer",
                                          "window_shopper"))
    events = history(sim)
    quiet = {c for c, p in sim.truth.items() if p == "loyal_big_spender"}
    stop = START + 20 * DAY_MS  # the loyal customers' last events
    feed(seg, [e for e in events if e["customer_id"] not in quiet or e["timestamp"] < stop], 0)
    seg.rescore(10**6)
    lapsing = Counter(s.segment for c, s in seg.states.items()
                      if sim.truth[c] == "lapsing_customer").most_common(1)[0][0]
    assert sum(seg.states[c].segment != lapsing for c in quiet) >= 0.9 * len(quiet)
    seg.schedule.trains = False  # the model stays as it is: only time passes
    version = seg.model.version
    later = ShopSimulator(100, seed=6, start_ms=START + 30 * DAY_MS, days=60, prefix="x",
                          personas=personas("window_shopper"))
    feed(seg, history(later), 10**7)  # 60 days of other customers' events
    moved = {a.customer_id: a for a in seg.rescore(10**6)}
    lapsed = [moved[c] for c in quiet if c in moved]
    assert len(lapsed) >= 0.9 * len(quiet), len(lapsed)
    assert {a.reason for a in lapsed} == {"time"} and {a.segment for a in lapsed} == {lapsing}
    assert all(a.event_id == "" and a.model_version == version for a in lapsed)
    assert seg.rescore(10**6) == []  # nothing moves twice
