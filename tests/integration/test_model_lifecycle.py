"""One model for all workers, segment lifecycle messages, snapshot refusal: real broker,
real Redis, real worker processes."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import orjson
import redis.asyncio as aioredis

from models.events import parse_timestamp
from models.simulator import DAY_MS, PERSONAS, ShopSimulator
from stream.embedded import free_port
from stream.kafka_io import ensure_topics, read_lag_once
from stream.keys import load_profile
from stream.settings import Settings
from tests.integration.helpers import WorkerProcess, consume_all, produce, wait_for
from tests.integration.layout import layout

START = 1_767_225_600_000
BY_NAME = {p.name: p for p in PERSONAS}


async def caught_up(settings: Settings) -> bool:
    rows = await read_lag_once(settings.kafka, settings.group, settings.events_topic)
    return bool(rows) and sum(r.lag for r in rows) == 0


def metric(worker: WorkerProcess, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", worker.metrics_text(), re.M)
    return float(m.group(1)) if m else -1.0


def encode(events: list[dict]) -> list[tuple[bytes | None, bytes | None]]:
    for e in events:
        e["timestamp"] = parse_timestamp(e["timestamp"])[0]
    events.sort(key=lambda e: e["timestamp"])
    return [(e["customer_id"].encode(), orjson.dumps(e)) for e in events]


async def published_model(r: aioredis.Redis, prefix: str) -> tuple[dict, dict[str, dict]]:
    """The published model and its profiles, read atomically (one MULTI)."""
    async with r.pipeline(transaction=True) as pipe:
        pipe.get(layout(r, prefix).model)
        pipe.hgetall(layout(r, prefix).segments)
        model, profiles = await pipe.execute()
    return orjson.loads(model or b"{}"), {k.decode(): load_profile(v) for k, v in profiles.items()}


async def hashes(r: aioredis.Redis, prefix: str, ids: list[str]) -> dict[str, dict[str, str]]:
    async with r.pipeline(transaction=False) as pipe:
        for cid in ids:
            pipe.hgetall(f"{prefix}customer:{{{cid}}}")
        raw = await pipe.execute()
    return {c: {k.decode(): v.decode() for k, v in h.items()} for c, h in zip(ids, raw,
                                                                             strict=True)}


async def test_two_workers_assign_with_one_model(settings: Settings, tmp_path: Path,
                                                 r: aioredis.Redis) -> None:
    await ensure_topics(settings)
    sim = ShopSimulator(customers=1500, seed=21, days=15)
    events = list(sim.history())
    await produce(settings, [(e["customer_id"].encode(), orjson.dumps(e)) for e in events])
    second = dataclasses.replace(settings, web_port=free_port())
    workers = [WorkerProcess(settings, tmp_path, "w1"), WorkerProcess(second, tmp_path, "w2")]
    prefix = settings.redis_prefix
    try:
        for w in workers:
            await w.wait_healthy()
        await wait_for(lambda: caught_up(settings), 180, "both workers to catch up")
        async def shared() -> bool:  # the gauge follows the group on a 2 s timer
            return all(metric(w, "segmenter_assigned_partitions") == 2 for w in workers)
        await wait_for(shared, 30, "each worker to own two partitions")
        learners = [metric(w, "segmenter_model_learner") for w in workers]
        assert sorted(learners) == [0.0, 1.0], learners
        published = int(await r.get(layout(r, prefix).model_version) or 0)

        async def same_version() -> bool:  # the non-learner loads each snapshot
            v = {metric(w, "segmenter_model_version") for w in workers}
            return v == {float(int(await r.get(layout(r, prefix).model_version) or 0))}
        await wait_for(same_version, 15, "both workers on the published model version")
        snapshot = orjson.loads(await r.get(layout(r, prefix).model) or b"{}")
        assert snapshot["version"] >= published and snapshot["algorithm"] == "kmeans"
        # every customer (whichever worker owns their partition) has a segment of that model;
        # the non-learner assigns its customers once the first snapshot reaches it
        async def all_assigned() -> bool:
            return all(d for d in (await hashes(r, prefix, sorted(sim.truth))).values())
        await wait_for(all_assigned, 20, "every customer to have a segment")
        docs = await hashes(r, prefix, sorted(sim.truth))
        # the learner may publish again meanwhile (the other worker's events count too):
        # compare with a snapshot read after the hashes, together with its profiles
        snapshot, profiles = await published_model(r, prefix)
        active = {sid for sid, p in profiles.items() if p["status"] == "active"}
        assert active == set(snapshot["ids"])
        assert {d["segment"] for d in docs.values()} <= active | set(profiles)
        assert all(int(d["model_version"]) <= snapshot["version"] for d in docs.values())
        names = {sid: p["name"] for sid, p in profiles.items()}
        assert all(d["segment"] in names for d in docs.values())
        # lifecycle: the first segments were born, and Kafka got the same messages
        entries = await r.xrange(layout(r, prefix).lifecycle)
        lifecycle = [orjson.loads(f[b"lifecycle"]) for _, f in entries]
        assert {e["segment"] for e in lifecycle if e["event"] == "born"} >= set(
            snapshot["ids"]) - {e["segment"] for e in lifecycle if e["event"] == "split"}
        copies = await consume_all(settings, settings.lifecycle_topic, len(lifecycle), 30)
        def order(msgs: list[dict]) -> list[bytes]:  # keyed by segment: per-key order only
            return sorted(orjson.dumps(m, option=orjson.OPT_SORT_KEYS) for m in msgs)
        assert order([orjson.loads(m.value) for m in copies]) == order(lifecycle)

        # the learner stops: the other worker takes over from the last snapshot
        learner = workers[learners.index(1.0)]
        other = workers[1 - learners.index(1.0)]
        assert learner.stop() == 0, learner.log()
        snapshot, _ = await published_model(r, prefix)  # its last one
        before = snapshot["version"]

        async def took_over() -> bool:
            return metric(other, "segmenter_model_learner") == 1.0
        await wait_for(took_over, 30, "the surviving worker to become the learner")

        async def warmed() -> bool:  # it read the taken-over customers' states from Redis
            return metric(other, "segmenter_cached_customers") == len(sim.truth)
        await wait_for(warmed, 30, "the survivor to hold every customer")
        more = ShopSimulator(customers=400, seed=22, days=5, prefix="m",
                             start_ms=START + 15 * DAY_MS)
        await produce(settings, [(e["customer_id"].encode(), orjson.dumps(e))
                                 for e in more.history()])
        await wait_for(lambda: caught_up(settings), 120, "the survivor to catch up")

        async def moved_on() -> bool:
            return int(await r.get(layout(r, prefix).model_version) or 0) > before
        await wait_for(moved_on, 30, "new model versions from the new learner")
        after = orjson.loads(await r.get(layout(r, prefix).model) or b"{}")
        # It continued the lineage: the same personas, so most segments keep their ids, and
        # new ones are numbered on (its sample holds the taken-over customers too; without
        # that, only one id survived here). Learning goes on over the whole population now:
        # when the first learner's share of the replay left it with 7-8 segments for these
        # 6 personas (3 of 34 runs; 3-6 in the others), the survivor merged 2-3 of them.
        lost = set(snapshot["ids"]) - set(after["ids"])
        assert len(lost) <= len(snapshot["ids"]) // 2, (snapshot["ids"], after["ids"])
        assert after["next_id"] >= snapshot["next_id"]
        assert after["version"] > before
    finally:
        for w in workers:
            w.stop()


async def test_a_new_persona_is_born_through_kafka_and_redis(
        settings: Settings, tmp_path: Path, r: aioredis.Redis) -> None:
    cfg = dataclasses.replace(settings, min_segments=2, max_segments=5, refresh_every=2)
    await ensure_topics(cfg)
    two = tuple(BY_NAME[n] for n in ("loyal_big_spender", "window_shopper"))
    old = ShopSimulator(900, seed=1, start_ms=START, days=40, prefix="a", personas=two)
    events = list(old.history())
    cut = START + 20 * DAY_MS
    first = [e for e in events if parse_timestamp(e["timestamp"])[0] < cut]
    rest = [e for e in events if parse_timestamp(e["timestamp"])[0] >= cut]
    worker = WorkerProcess(cfg, tmp_path)
    prefix = cfg.redis_prefix
    try:
        await worker.wait_healthy()
        await produce(cfg, encode(first))
        await wait_for(lambda: caught_up(cfg), 120, "phase 1")
        ids_before = set(orjson.loads(await r.get(layout(r, prefix).model) or b"{}")["ids"])
        newcomers = ShopSimulator(450, seed=2, start_ms=START + 20 * DAY_MS, days=20,
                                  prefix="n", personas=(BY_NAME["mobile_evening_browser"],))
        await produce(cfg, encode(rest + list(newcomers.history())))
        await wait_for(lambda: caught_up(cfg), 120, "phase 2")
        docs = await hashes(r, prefix, sorted(newcomers.truth))
        homes = [d["segment"] for d in docs.values()]
        home = max(set(homes), key=homes.count)
        assert homes.count(home) >= 0.9 * len(homes) and home not in ids_before
        lifecycle = [orjson.loads(f[b"lifecycle"])
                     for _, f in await r.xrange(layout(r, prefix).lifecycle)]
        birth = [e for e in lifecycle if e["segment"] == home]
        assert birth and birth[0]["event"] in ("born", "split"), lifecycle
        model = await r.get(layout(r, prefix).model)
        assert ids_before <= set(orjson.loads(model or b"{}")["ids"])
        profile = load_profile(await r.hget(layout(r, prefix).segments, home) or b"{}")
        assert profile["lifecycle"][0]["event"] == birth[0]["event"]
        assert profile["criterion"]["name"] == "davies_bouldin"
        copies = await consume_all(cfg, cfg.lifecycle_topic, len(lifecycle), 30)
        assert any(m.key == home.encode() and orjson.loads(m.value) == birth[0]
                   for m in copies)
    finally:
        assert worker.stop() == 0, worker.log()


async def test_a_mismatched_snapshot_is_refused(settings: Settings, tmp_path: Path,
                                                r: aioredis.Redis) -> None:
    from models.kmeans import SegmentModel

    cp = SegmentModel().checkpoint()
    await r.set(layout(r, settings.redis_prefix).model,
                orjson.dumps({**cp, "feature_schema": "old"}))
    worker = WorkerProcess(settings, tmp_path)
    try:
        assert worker.proc.wait(60) != 0
        assert "checkpoint feature schema old" in worker.log()
    finally:
        worker.stop()
