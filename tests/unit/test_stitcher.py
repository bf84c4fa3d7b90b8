"""Identity stitching inside the core's batches (models.stitcher via Segmenter.consume): what
each batch produces, writes and merges, with every produced message fed back as the record
the events topic would deliver, and the control messages delivered twice."""

from __future__ import annotations

import orjson

from models.config import BatchResult
from models.core import Record, Segmenter, SegmenterConfig
from models.identity import LINK, MERGE, UNLINK, Unlink, encode_unlink, merge_id
from models.records import CONTROL_HEADER
from models.stitching import decode_record

DAY = 86_400_000
T = 1_767_225_600_000 + 4 * DAY


def rec(partition: int, offset: int, key: str | bytes, value: bytes | None,
        control: bytes | None = None) -> Record:
    headers = ((CONTROL_HEADER, control),) if control is not None else ()
    return Record("events", partition, offset, key if isinstance(key, bytes) else key.encode(),
                  value, headers)


def ev(event_id: str, ts: int, etype: str = "page_view", amount: float = 0.0,
       **ids: str) -> bytes:
    body: dict[str, object] = {"event_id": event_id, "type": etype, "timestamp": ts, **ids}
    if amount:
        body["properties"] = {"amount": amount}
    return orjson.dumps(body)


def run(seg: Segmenter, records: list[Record]) -> BatchResult:
    parsed = seg.parse(records)
    assert not seg.missing(parsed) - {r.key.decode() for r in records if r.key}
    return seg.apply(parsed, {})


def test_link_merge_and_forward_through_the_core() -> None:
    seg = Segmenter(SegmenterConfig(warmup=10**6))  # no model: features only
    run(seg, [rec(0, 0, "ck-1", ev("a1", T, anonymous_id="ck-1")),
              rec(0, 1, "ck-1", ev("a2", T + 1, "purchase", 30.0, anonymous_id="ck-1")),
              rec(1, 0, "c1", ev("c-1", T, "purchase", 50.0, customer_id="c1"))])
    res = run(seg, [rec(1, 1, "c1", ev("id", T + 9, "identify", customer_id="c1",
                                       anonymous_id="ck-1"))])
    [(key, link, control)] = res.produce
    assert (key, control) == (b"ck-1", LINK)

    # the link on A's partition, twice (redelivered): one record written, the same merge
    merges, written = [], []
    for _ in range(2):
        res = run(seg, [rec(0, 2, key, link, LINK)])
        [(mkey, merge, mcontrol)] = res.produce
        assert (mkey, mcontrol) == (b"c1", MERGE)
        merges.append(merge)
        written += res.linked
    [(anon, partition, off, blob)] = written  # the first time only
    record = decode_record(blob)
    assert (anon, partition, off) == ("ck-1", 0, 2)
    assert record is not None and record.customer_id == "c1" and record.snapshot
    assert merges[0] == merges[1]
    assert "ck-1" not in seg.states and "ck-1" in seg.stitch.links

    # the merge on C's partition, twice: folded in once
    res = run(seg, [rec(1, 2, "c1", merges[0], MERGE)])
    assert res.counts["merge", "processed"] == 1 and res.merged[0][:3] == ("ck-1", "c1", "id")
    c1 = seg.states["c1"]
    assert (c1.orders_total, c1.spend_total, c1.events_total) == (2, 80.0, 4)
    res = run(seg, [rec(1, 3, "c1", merges[0], MERGE)])
    assert res.counts["merge", "duplicate"] == 1
    assert c1.orders_total == 2
    assert c1.admit(merge_id("ck-1", "id"), T + 9, DAY) == "duplicate"

    # a later event with only A: forwarded to C (not applied to A), then applied once
    late = ev("a3", T + 20, "purchase", 5.0, anonymous_id="ck-1")
    res = run(seg, [rec(0, 3, "ck-1", late)])
    [(fkey, forwarded, fcontrol)] = res.produce
    assert (fkey, fcontrol) == (b"c1", None) and res.counts["purchase", "forwarded"] == 1
    assert "ck-1" not in seg.states
    run(seg, [rec(1, 4, "c1", forwarded), rec(1, 5, "c1", forwarded)])
    assert (c1.orders_total, c1.spend_total) == (3, 85.0)
    # the earlier anonymous event re-sent: a duplicate for C too
    res = run(seg, [rec(0, 4, "ck-1", ev("a2", T + 1, "purchase", 30.0, anonymous_id="ck-1"))])
    run(seg, [rec(1, 6, "c1", res.produce[0][1])])
    assert c1.orders_total == 3


def test_a_malformed_link_is_dead_lettered_and_an_erasure_forgets_the_link() -> None:
    seg = Segmenter(SegmenterConfig(warmup=10**6))
    res = run(seg, [rec(0, 0, "ck-1", b"{}", LINK)])
    assert res.dead and res.dead[0].reason.startswith("not a link message")
    seg.stitch.links["ck-1"] = decode_record(b"\x01LNK" + orjson.dumps(["c1", "id", 5])
                                             + b"\x00")  # type: ignore[assignment]
    seg.stitch.partitions["ck-1"] = 0
    res = run(seg, [rec(0, 1, "ck-1", None, b"erase")])
    assert res.erased == ["ck-1"] and "ck-1" not in seg.stitch.links
    res = run(seg, [rec(0, 2, "ck-1", ev("a9", T, anonymous_id="ck-1"))])
    assert not res.produce and "ck-1" in seg.states  # a profile of its own again


def test_an_unlink_forgets_only_a_link_to_that_customer() -> None:
    seg = Segmenter(SegmenterConfig(warmup=10**6))
    for anon, cid in (("ck-1", "c1"), ("ck-2", "c2")):
        seg.stitch.links[anon] = decode_record(b"\x01LNK" + orjson.dumps([cid, "id", 5])
                                               + b"\x00")  # type: ignore[assignment]
        seg.stitch.partitions[anon] = 0
    res = run(seg, [rec(0, 0, "ck-1", encode_unlink(Unlink("c1", "ck-1")), UNLINK),
                    rec(0, 1, "ck-2", encode_unlink(Unlink("c1", "ck-2")), UNLINK)])
    assert res.unlinked == [("ck-1", "c1")]  # ck-2 links to c2 now: kept
    assert "ck-1" not in seg.stitch.links and "ck-2" in seg.stitch.links
    res = run(seg, [rec(0, 2, "ck-1", ev("a9", T, anonymous_id="ck-1"))])
    assert not res.produce and "ck-1" in seg.states
