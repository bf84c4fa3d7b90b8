from __future__ import annotations

import pickle
import random

import orjson
import pytest

from models.algorithms import from_checkpoint
from models.config import BatchResult
from models.core import Parsed, Record, Segmenter, SegmenterConfig
from models.evaluation import adjusted_rand_index
from models.kmeans import SegmentModel
from models.learning import LearnJob, learn
from models.model import BaseModel, CheckpointMismatch
from models.records import Assignment
from models.simulator import ShopSimulator

CFG = SegmenterConfig(warmup=300, update_every=1000)


def records(customers: int = 600, days: float = 12, seed: int = 3) -> tuple[list[Record],
                                                                             ShopSimulator]:
    sim = ShopSimulator(customers, seed=seed, days=days)
    recs = [Record("events", hash(e["customer_id"]) % 2, i, e["customer_id"].encode(),
                   orjson.dumps(e)) for i, e in enumerate(sim.history())]
    return recs, sim


def run(seg: Segmenter, recs: list[Record], batch: int) -> dict[str, tuple[str, str]]:
    final: dict[str, tuple[str, str]] = {}
    for i in range(0, len(recs), batch):
        out = seg.apply(seg.parse(recs[i:i + batch]), {})
        for a in out.assignments + seg.drain():
            final[a.customer_id] = (a.segment, a.state.hex())
    return final


def test_replay_is_deterministic_whatever_the_batching() -> None:
    recs, _ = records()
    a = run(Segmenter(CFG), recs, 1000)
    b = run(Segmenter(CFG), recs, 1000)
    c = run(Segmenter(CFG), recs, 777)
    assert a == b
    assert a == c  # features and final segments do not depend on batch boundaries


class Deferred:
    """What the worker does with a helper process (stream.updates), without the process:
    each due update starts on a pickled copy of the model while events go on, and is taken
    at the next point where customers are assigned; at a batch's end it may stay out."""

    def __init__(self, seg: Segmenter) -> None:
        self.seg = seg
        self.out: tuple[LearnJob, BaseModel] | None = None
        self.stops = self.carried = 0

    def apply(self, parsed: Parsed, settle: bool = False) -> BatchResult:
        seg, res, done = self.seg, BatchResult(), 0
        while True:
            done = seg.consume(parsed, done, res)
            end = done >= len(parsed)
            if self.out is not None:
                if end and not seg.schedule.due and not settle:
                    self.carried += 1
                    return res
                job, copy = self.out
                self.out = None
                self.stops += 1
                seg.take(job, learn(copy, job), res)
            job = seg.plan_update(seg.assign_changed(res))
            if job is not None:
                self.out = (job, pickle.loads(pickle.dumps(seg.model)))  # noqa: S301 (ours)
            if end and not (settle and self.out is not None):
                return res


def test_deferred_model_updates_give_what_inline_updates_give() -> None:
    recs, _ = records()
    cfg = SegmenterConfig(warmup=300, update_every=1000, refresh_every=2, trains=True)
    inline, deferred = Segmenter(cfg), Deferred(Segmenter(cfg))
    for i in range(0, len(recs), 2500):
        out = deferred.apply(deferred.seg.parse(recs[i:i + 2500]), settle=True)
        assert deferred.out is None  # settled: no update out
        ref = inline.apply(inline.parse(recs[i:i + 2500]), {})
        assert [(a.customer_id, a.segment, a.reason, a.explanation) for a in out.assignments] \
            == [(a.customer_id, a.segment, a.reason, a.explanation) for a in ref.assignments]
        assert (out.counts, out.lifecycle, out.model_updated) == \
            (ref.counts, ref.lifecycle, ref.model_updated)
        # the same writes (a renamed segment marks its customers a little later: order)
        assert sorted((a.customer_id, a.segment_name, a.state) for a in deferred.seg.drain()) \
            == sorted((a.customer_id, a.segment_name, a.state) for a in inline.drain())
    assert deferred.stops >= len(recs) // 1000 - 2
    assert deferred.seg.model.checkpoint() == inline.model.checkpoint()


def test_an_update_out_at_a_batch_end_goes_on_with_the_next_batch() -> None:
    """The worker does not wait at a batch's end for an update still running in its helper:
    the batch's last customers wait for it with the next batch's, or until a commit settles
    it. The segments and the model are those of inline updates."""
    recs, _ = records()
    cfg = SegmenterConfig(warmup=300, update_every=1000, refresh_every=2, trains=True)
    inline, deferred = Segmenter(cfg), Deferred(Segmenter(cfg))
    ref: dict[str, tuple[str, str]] = {}
    got: dict[str, tuple[str, str]] = {}

    def keep(into: dict[str, tuple[str, str]], writes: list[Assignment]) -> None:
        into.update((a.customer_id, (a.segment, a.state.hex())) for a in writes)

    for n, i in enumerate(range(0, len(recs), 2500)):
        keep(got, deferred.apply(deferred.seg.parse(recs[i:i + 2500])).assignments)
        keep(ref, inline.apply(inline.parse(recs[i:i + 2500]), {}).assignments)
        if n % 3 == 2:  # a commit: settle, then write every changed state
            keep(got, deferred.apply([], settle=True).assignments)
            assert deferred.out is None and not deferred.seg.changed
            keep(got, deferred.seg.drain())
            keep(ref, inline.drain())
    keep(got, deferred.apply([], settle=True).assignments)
    keep(got, deferred.seg.drain())
    keep(ref, inline.drain())
    assert deferred.carried >= 5  # batches did end with an update out
    assert got == ref
    assert deferred.seg.model.checkpoint() == inline.model.checkpoint()


def test_redelivery_and_resent_ids_change_nothing() -> None:
    recs, _ = records(200, 6)
    seg = Segmenter(CFG)
    run(seg, recs, 2000)
    states = {c: s.to_bytes() for c, s in seg.states.items()}
    out = seg.apply(seg.parse(recs[:500]), {})  # same offsets again
    assert out.assignments == [] and seg.drain() == [] and out.counts.total() == 500
    assert all(k[1] == "duplicate" for k in out.counts)
    # re-sent (a producer retry): recent event ids again at new offsets
    resent = [Record(r.topic, r.partition, r.offset + 10**6, r.key, r.value) for r in recs[-50:]]
    out = seg.apply(seg.parse(resent), {})
    assert {k[1] for k in out.counts} == {"duplicate"}
    for cid, s in seg.states.items():
        before = type(s).from_bytes(cid, states[cid])
        assert before.to_bytes() == s.to_bytes()


def test_invalid_records_are_dead_lettered_and_valid_ones_processed() -> None:
    recs, _ = records(100, 3)
    bad = [Record("events", 0, 10**7 + i, b"k", v) for i, v in
           enumerate([b"{", b"[]", b'{"event_id": 1}', None])]
    out = Segmenter(CFG).apply(Segmenter(CFG).parse(bad + recs), {})
    assert [d.record.value for d in out.dead] == [b"{", b"[]", b'{"event_id": 1}', None]
    assert all(d.reason for d in out.dead)
    assert out.counts["invalid", "dead_lettered"] == 4
    assert sum(n for (t, o), n in out.counts.items() if o == "processed") == len(recs)


def test_segments_recover_personas() -> None:
    recs, sim = records(1500, 15)
    seg = Segmenter(CFG)
    final = run(seg, recs, 5000)
    for a in seg.rescore(10**6):  # what the worker's background re-scoring does
        final[a.customer_id] = (a.segment, "")
    ids = sorted(sim.truth)
    ari = adjusted_rand_index([sim.truth[c] for c in ids], [final[c][0] for c in ids])
    # scripts/evaluate.py measures ~0.9 on 5000 customers over 30 days; this smaller, shorter
    # stream (fewer events per customer) scores ~0.67. Below 0.6 personas are being lost.
    assert ari >= 0.6, ari


def test_checkpoint_mismatch_is_refused() -> None:
    m = SegmentModel(min_segments=2, max_segments=2, warmup=2)
    cp = m.checkpoint()
    with pytest.raises(CheckpointMismatch, match="feature schema"):
        from_checkpoint({**cp, "feature_schema": "other"})
    with pytest.raises(CheckpointMismatch, match="algorithm"):
        from_checkpoint({**cp, "algorithm": "pickle"})
    with pytest.raises(CheckpointMismatch, match="format"):
        from_checkpoint({**cp, "format": 1})


def test_a_whole_stream_sent_again_changes_nothing_and_late_events_are_dead_lettered() -> None:
    recs, _ = records(300, 20)
    seg = Segmenter(CFG)
    run(seg, recs, 2000)
    states = {c: s.to_bytes() for c, s in seg.states.items()}
    version, learned = seg.model.version, seg.schedule._since
    # a producer retry after an outage, or a backfill run twice: same ids, new offsets
    again = [Record(r.topic, r.partition, r.offset + 10**7, r.key, r.value) for r in recs]
    out = seg.apply(seg.parse(again), {})
    assert out.assignments == [] and seg.drain() == [] and not out.model_updated
    assert {o for _, o in out.counts} <= {"duplicate", "late"}
    assert {c: s.to_bytes() for c, s in seg.states.items()} == states
    assert seg.model.version == version and seg.schedule._since == learned  # no learning
    late = [d for d in out.dead if d.reason == "late"]
    assert len(late) == sum(n for (_, o), n in out.counts.items() if o == "late") > 0
    assert "SEGMENTER_ALLOWED_LATENESS_S" in late[0].detail


def test_warmed_states_are_rescored_and_sampled_and_learning_waits() -> None:
    """A worker that restarts, or takes partitions over, reads their states from Redis:
    those customers are re-scored without new events and join the learner's sample."""
    recs, _ = records(400, 10)
    first = Segmenter(CFG)
    run(first, recs, 1000)
    saved = []
    for cid, st in first.states.items():  # as Redis holds them: blob + the segment hash
        saved.append(type(st).from_bytes(cid, st.to_bytes()))
        saved[-1].segment = st.segment
    survivor = Segmenter(CFG, from_checkpoint(first.model.checkpoint()))
    survivor.schedule.warming = True
    assert survivor.warm(saved) == len(saved) and survivor.warm(saved) == 0  # cached win
    assert len(survivor.schedule.own_sample(survivor.cache, 10_000)) == len(saved)
    # learning waits while warming, however many events arrive
    before = survivor.model.version
    survivor.schedule.count(10 * CFG.update_every)
    assert not survivor.apply([], {}).model_updated and survivor.model.version == before
    survivor.schedule.warming = False
    assert survivor.apply([], {}).model_updated
    # every warmed customer is visited by the re-scoring pass
    survivor.cache.watermark += 200 * 86_400_000  # much later: activity has faded
    moved = survivor.rescore(len(saved))
    assert moved and {a.reason for a in moved} <= {"time", "model_update"}
    bounded = Segmenter(SegmenterConfig(warmup=300, update_every=1000, cache_size=50))
    assert bounded.warm(saved) == 50  # the cache bound holds


def test_a_renamed_segment_reaches_its_customers_at_the_next_drain() -> None:
    recs, _ = records()
    seg = Segmenter(CFG)
    run(seg, recs, 1000)
    sid = max(seg.model.ids, key=lambda s: sum(st.segment == s for st in seg.states.values()))
    ckpt = seg.model.checkpoint()
    ckpt["version"] += 1
    ckpt["names"] = {**ckpt["names"], sid: "Renamed by the learner"}
    seg.adopt(from_checkpoint(ckpt))
    written = {a.customer_id: a.segment_name for a in seg.drain()}
    members = {c for c, st in seg.states.items() if st.segment == sid}
    assert members and set(written) == members
    assert set(written.values()) == {"Renamed by the learner"}


def test_the_same_final_state_whatever_the_batch_sizes() -> None:
    """The worker's reader switches between live batches (a few records, an update still
    out settled when the stream pauses) and large ones when behind (stream.consume): any
    such mix of batch sizes ends in the segments, states and model of one inline run."""
    recs, _ = records()
    cfg = SegmenterConfig(warmup=300, update_every=1000, refresh_every=2, trains=True)
    inline = Segmenter(cfg)
    want = run(inline, recs, 5000)
    deferred = Deferred(Segmenter(cfg))
    got: dict[str, tuple[str, str]] = {}

    def keep(writes: list[Assignment]) -> None:
        got.update((a.customer_id, (a.segment, a.state.hex())) for a in writes)

    rng = random.Random(7)
    i = n = 0
    sizes = set()
    while i < len(recs):
        size = rng.choice((1, 3, 40, 1000, 4000) if n % 40 < 20 else (1, 2, 5))
        sizes.add(size)
        keep(deferred.apply(deferred.seg.parse(recs[i:i + size])).assignments)
        i, n = i + size, n + 1
        if rng.random() < 0.1:  # the stream pauses (the worker settles), or a commit
            keep(deferred.apply([], settle=True).assignments)
        if n % 30 == 0:
            keep(deferred.seg.drain())
    keep(deferred.apply([], settle=True).assignments)
    keep(deferred.seg.drain())
    assert deferred.carried >= 5 and len(sizes) == 7  # the mix did happen
    assert got == want
    assert deferred.seg.model.checkpoint() == inline.model.checkpoint()
