from __future__ import annotations

import pickle

import orjson
import pytest

from models.algorithms import from_checkpoint
from models.core import Record, Segmenter, SegmenterConfig
from models.evaluation import adjusted_rand_index
from models.kmeans import SegmentModel
from models.model import CheckpointMismatch
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
        out = seg.apply(seg.parse(recs[i:i + batch]), {}, now_ms=0)
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


def test_deferred_model_updates_give_what_inline_updates_give() -> None:
    """What the worker does with a helper process (stream.learner): each due update starts
    on a pickled copy of the model while events go on, and is taken at the next point where
    customers are assigned."""
    recs, _ = records()
    cfg = SegmenterConfig(warmup=300, update_every=1000, refresh_every=2, learner=True)
    inline, deferred = Segmenter(cfg), Segmenter(cfg)
    deferred.defer_learning = True
    stops = 0
    for i in range(0, len(recs), 2500):
        parsed = deferred.parse(recs[i:i + 2500])
        out = deferred.apply(parsed, {}, now_ms=0)
        running = None
        while out.resume is not None:
            stops += 1
            job = deferred.job
            assert job is not None
            if not deferred.job_sent:  # started elsewhere: here, learned later, at delivery
                running = pickle.loads(pickle.dumps(deferred.model))  # noqa: S301 (ours)
                deferred.job_sent = True
            else:
                assert running is not None
                deferred.deliver(running, running.learn(job.sample, refresh=job.refresh))
            deferred.apply(parsed, {}, 0, out, out.resume)
        assert deferred.job is None  # a batch never ends with an update out
        ref = inline.apply(inline.parse(recs[i:i + 2500]), {}, now_ms=0)
        assert [(a.customer_id, a.segment, a.reason, a.why) for a in out.assignments] == \
            [(a.customer_id, a.segment, a.reason, a.why) for a in ref.assignments]
        assert (out.counts, out.lifecycle, out.model_updated) == \
            (ref.counts, ref.lifecycle, ref.model_updated)
        # the same writes (a renamed segment marks its customers a little later: order)
        assert sorted((a.customer_id, a.segment_name, a.state) for a in deferred.drain()) == \
            sorted((a.customer_id, a.segment_name, a.state) for a in inline.drain())
    assert stops >= 2 * (len(recs) // 1000) - 2
    assert deferred.model.checkpoint() == inline.model.checkpoint()


def test_an_update_out_at_a_batch_end_goes_on_with_the_next_batch() -> None:
    """The worker does not wait at a batch's end for an update still running in its helper:
    the batch's last customers wait for it with the next batch's, or until a commit settles
    it. The segments and the model are those of inline updates."""
    recs, _ = records()
    cfg = SegmenterConfig(warmup=300, update_every=1000, refresh_every=2, learner=True)
    inline, deferred = Segmenter(cfg), Segmenter(cfg)
    deferred.defer_learning = True
    running = None
    ref: dict[str, tuple[str, str]] = {}
    out_final: dict[str, tuple[str, str]] = {}
    carried = 0

    def go(parsed: list, settle: bool) -> list:  # type: ignore[type-arg]
        nonlocal running, carried
        out = deferred.apply(parsed, {}, now_ms=0)
        while out.resume is not None:
            job = deferred.job
            assert job is not None
            if not deferred.job_sent:
                running = pickle.loads(pickle.dumps(deferred.model))  # noqa: S301 (ours)
                deferred.job_sent = True
            elif deferred.carrying and not settle:
                carried += 1
                break
            else:
                assert running is not None
                deferred.deliver(running, running.learn(job.sample, refresh=job.refresh))
            deferred.apply(parsed, {}, 0, out, out.resume)
        return out.assignments

    for n, i in enumerate(range(0, len(recs), 2500)):
        for a in go(deferred.parse(recs[i:i + 2500]), settle=False):
            out_final[a.customer_id] = (a.segment, a.state.hex())
        for a in inline.apply(inline.parse(recs[i:i + 2500]), {}, now_ms=0).assignments:
            ref[a.customer_id] = (a.segment, a.state.hex())
        if n % 3 == 2:  # a commit: settle, then write every changed state
            for a in go([], settle=True):
                out_final[a.customer_id] = (a.segment, a.state.hex())
            assert deferred.job is None
            out_final.update((a.customer_id, (a.segment, a.state.hex()))
                             for a in deferred.drain())
            ref.update((a.customer_id, (a.segment, a.state.hex())) for a in inline.drain())
    for a in go([], settle=True):
        out_final[a.customer_id] = (a.segment, a.state.hex())
    out_final.update((a.customer_id, (a.segment, a.state.hex())) for a in deferred.drain())
    ref.update((a.customer_id, (a.segment, a.state.hex())) for a in inline.drain())
    assert carried >= 5  # batches did end with an update out
    assert out_final == ref
    assert deferred.model.checkpoint() == inline.model.checkpoint()


def test_redelivery_and_resent_ids_change_nothing() -> None:
    recs, _ = records(200, 6)
    seg = Segmenter(CFG)
    run(seg, recs, 2000)
    states = {c: s.to_bytes() for c, s in seg.states.items()}
    out = seg.apply(seg.parse(recs[:500]), {}, now_ms=0)  # same offsets again
    assert out.assignments == [] and seg.drain() == [] and out.counts.total() == 500
    assert all(k[1] == "duplicate" for k in out.counts)
    # re-sent (a producer retry): recent event ids again at new offsets
    resent = [Record(r.topic, r.partition, r.offset + 10**6, r.key, r.value) for r in recs[-50:]]
    out = seg.apply(seg.parse(resent), {}, now_ms=0)
    assert {k[1] for k in out.counts} == {"duplicate"}
    for cid, s in seg.states.items():
        before = type(s).from_bytes(cid, states[cid])
        assert before.counters == s.counters and before.recent_ids == s.recent_ids


def test_invalid_records_are_dead_lettered_and_valid_ones_processed() -> None:
    recs, _ = records(100, 3)
    bad = [Record("events", 0, 10**7 + i, b"k", v) for i, v in
           enumerate([b"{", b"[]", b'{"event_id": 1}', None])]
    out = Segmenter(CFG).apply(Segmenter(CFG).parse(bad + recs), {}, now_ms=0)
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


def test_resend_outside_the_dedup_window_is_documented_limit() -> None:
    cfg = SegmenterConfig(min_segments=2, max_segments=2, warmup=2, update_every=10**6,
                          dedup_window=4)
    seg = Segmenter(cfg)
    base = '{"event_id":"e%d","customer_id":"c","type":"page_view","timestamp":%d}'
    recs = [Record("t", 0, i, b"c", (base % (i, 1767225600000 + i)).encode()) for i in range(6)]
    seg.apply(seg.parse(recs), {}, 0)
    recent = [Record("t", 0, 100 + i, b"c", r.value) for i, r in enumerate(recs[2:])]
    out = seg.apply(seg.parse(recent), {}, 0)
    assert out.counts["page_view", "duplicate"] == 4  # the 4 most recent ids are remembered
    oldest = seg.apply(seg.parse([Record("t", 0, 200, b"c", recs[0].value)]), {}, 0)
    assert oldest.counts["page_view", "processed"] == 1  # older ones are not


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
    survivor.warming = True
    assert survivor.warm(saved) == len(saved) and survivor.warm(saved) == 0  # cached win
    assert len(survivor.population_sample(10_000)) == len(saved)
    # learning waits while warming, however many events arrive
    before = survivor.model.version
    survivor._since_update = 10 * CFG.update_every
    assert not survivor.update_if_due().model_updated and survivor.model.version == before
    survivor.warming = False
    assert survivor.update_if_due().model_updated
    # every warmed customer is visited by the re-scoring pass
    survivor.watermark += 200 * 86_400_000  # much later: activity has faded for everyone
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
