"""``SEGMENTER_ALGORITHM=dbstream`` through real worker processes, the real broker and Redis:
customers get segments of a published DBSTREAM model, and a restarted worker goes on from
its snapshot."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import orjson
import redis.asyncio as aioredis

from models.simulator import DAY_MS, ShopSimulator
from stream.kafka_io import ensure_topics
from stream.settings import Settings
from tests.integration.helpers import WorkerProcess, produce, wait_for
from tests.integration.layout import counts, layout
from tests.integration.test_model_lifecycle import START, hashes, metric, published_model
from tests.integration.test_pipeline import lag_is_zero


def messages(sim: ShopSimulator) -> list[tuple[bytes | None, bytes | None]]:
    return [(e["customer_id"].encode(), orjson.dumps(e)) for e in sim.history()]


async def test_dbstream_segments_customers_and_survives_a_restart(
        settings: Settings, tmp_path: Path, r: aioredis.Redis) -> None:
    cfg = dataclasses.replace(settings, algorithm="dbstream")
    prefix = cfg.redis_prefix
    await ensure_topics(cfg)
    sim = ShopSimulator(customers=800, seed=13, start_ms=START, days=10)
    await produce(cfg, messages(sim))
    worker = WorkerProcess(cfg, tmp_path)
    try:
        await worker.wait_healthy()
        await wait_for(lambda: lag_is_zero(cfg), 120, "the worker to catch up")
        model, profiles = await published_model(r, prefix)
        assert model["algorithm"] == "dbstream" and model["version"] > 0
        assert model["state"]["micro"], "the snapshot carries DBSTREAM's micro-clusters"
        active = {sid for sid, p in profiles.items() if p["status"] == "active"}
        assert active == set(model["ids"]) and len(active) >= 2, profiles
        assert all(p["name"] and p["centre"] for p in profiles.values())
        docs = await hashes(r, prefix, sorted(sim.truth))
        unassigned = [c for c, d in docs.items() if not d.get("segment")]
        assert not unassigned, f"{len(unassigned)} customers have no segment"
        assert {d["segment"] for d in docs.values()} <= set(profiles)
        assert all(1 <= int(d["model_version"]) <= model["version"] for d in docs.values())
        sizes = await counts(r, prefix, "sizes")
        assert sum(sizes.values()) == len(sim.truth)

        async def serving_it() -> bool:  # the worker assigns with the version it published
            published = int(await r.get(layout(r, prefix).model_version) or 0)
            return metric(worker, "segmenter_model_version") == published
        await wait_for(serving_it, 30, "the worker to report the published model version")
    finally:
        assert worker.stop() == 0, worker.log()
    before, _ = await published_model(r, prefix)

    # A new worker loads the DBSTREAM snapshot (checkpoint -> model) instead of starting
    # over: it reports that version, and learning goes on from it.
    worker = WorkerProcess(cfg, tmp_path, "restarted")
    try:
        await worker.wait_healthy()

        async def loaded() -> bool:
            return metric(worker, "segmenter_model_version") == before["version"]
        await wait_for(loaded, 30, "the restarted worker to load the snapshot")
        more = ShopSimulator(customers=300, seed=14, start_ms=START + 10 * DAY_MS, days=4,
                             prefix="n")
        await produce(cfg, messages(more))
        await wait_for(lambda: lag_is_zero(cfg), 120, "the restarted worker to catch up")
        after, profiles = await published_model(r, prefix)
        assert after["algorithm"] == "dbstream"
        assert after["version"] > before["version"]  # went on: a fresh model starts at 1
        assert after["next_id"] >= before["next_id"]  # ids go on from the snapshot's
        assert set(before["ids"]) & set(after["ids"]), (before["ids"], after["ids"])
        docs = await hashes(r, prefix, sorted(more.truth))
        assert all(d.get("segment") in profiles for d in docs.values())
    finally:
        assert worker.stop() == 0, worker.log()
