"""The warm start's partition index (``stream.partition_index``) against real Redis, and a
worker taking over partitions reading exactly their customers: real broker, real Redis,
real worker processes."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from models.core import Segmenter
from models.simulator import ShopSimulator
from stream.cli import main
from stream.embedded import free_port
from stream.health import Health
from stream.kafka_io import ensure_topics
from stream.metrics import Metrics
from stream.partition_index import indexed, mark_if_empty, partition_states, prune, rebuild
from stream.redis_io import RedisStore, connect
from stream.settings import Settings
from stream.warm import Warmer
from tests.integration.helpers import WorkerProcess, produce, wait_for
from tests.integration.layout import layout
from tests.integration.test_model_lifecycle import caught_up, metric
from tests.integration.test_store import NOW, assignment


async def members(r: aioredis.Redis, key: str) -> set[str]:
    return {m.decode() for m in await r.smembers(key)}


async def test_writes_keep_each_partition_index_and_pages_read_only_it(
        settings: Settings, r: aioredis.Redis) -> None:
    client = connect(settings.redis_url, cluster=settings.redis_cluster)
    store = RedisStore(client, settings.redis_prefix, settings.stream_maxlen)
    k = store.keys
    try:
        assert await mark_if_empty(store) and await indexed(store)  # a new keyspace
        writes = [assignment(f"c{i}/{{x}}", i % 4, f"s{i % 3}") for i in range(40)]
        await store.write(writes[:20], NOW)
        await store.write(writes[20:], NOW, refresh=True)  # the interval flush indexes too
        for p in range(4):
            assert await members(r, k.partition(p)) == {
                a.customer_id for a in writes if a.partition == p}
        cursor, found = 0, []
        while True:  # pages of 3: a partition read in several steps
            cursor, states = await partition_states(store, 1, cursor, count=3)
            found.extend(states)
            if cursor == 0:
                break
        assert sorted(s.customer_id for s in found) == sorted(
            a.customer_id for a in writes if a.partition == 1)
        assert {s.segment for s in found if s.customer_id in {
            a.customer_id for a in writes[:20]}} <= {"s0", "s1", "s2"}
        # an erasure leaves the index
        assert await store.erase(["c1/{x}"], NOW, 3) == 1
        assert "c1/{x}" not in await members(r, k.partition(1))
        # a customer whose last write came from another partition (a repartition) is in
        # both sets but read only from the one its state names
        await store.write([assignment("c5/{x}", 2, "s0")], NOW)
        _, states = await partition_states(store, 1, 0, count=1000)
        assert "c5/{x}" not in {s.customer_id for s in states}
        assert await prune(store, count=4) == 1  # what segmenter reindex also does
        assert "c5/{x}" not in await members(r, k.partition(1))
        assert "c5/{x}" in await members(r, k.partition(2))
        assert await mark_if_empty(store) is False  # states exist
    finally:
        await client.aclose()


async def test_reindex_rebuilds_the_index_of_states_written_without_it(
        settings: Settings, r: aioredis.Redis, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    client = connect(settings.redis_url, cluster=settings.redis_cluster)
    store = RedisStore(client, settings.redis_prefix, settings.stream_maxlen)
    k = store.keys
    try:
        writes = [assignment(f"c{i}", i % 4, "s0") for i in range(2500)]
        await store.write(writes, NOW)
        await r.delete(*[k.partition(p) for p in range(4)])  # as an older version left it
        assert not await indexed(store)
        assert await rebuild(store, count=700) == 2500
        assert await indexed(store)
        for p in range(4):
            assert await members(r, k.partition(p)) == {
                a.customer_id for a in writes if a.partition == p}
        # the command line, as an operator runs it (a second time: idempotent)
        monkeypatch.setenv("SEGMENTER_REDIS_URL", settings.redis_url)
        monkeypatch.setenv("SEGMENTER_REDIS_PREFIX", settings.redis_prefix)
        monkeypatch.setenv("SEGMENTER_REDIS_CLUSTER", str(settings.redis_cluster).lower())
        assert await asyncio.to_thread(main, ["reindex"]) == 0
        assert "indexed 2500 customer states" in capsys.readouterr().out
        assert await members(r, k.partition(1)) == {
            a.customer_id for a in writes if a.partition == 1}
    finally:
        await client.aclose()


async def test_only_a_store_with_states_and_no_index_warns_of_the_scan(
        settings: Settings, r: aioredis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    client = connect(settings.redis_url, cluster=settings.redis_cluster)
    store = RedisStore(client, settings.redis_prefix, settings.stream_maxlen)
    everything = {0, 1, 2, 3}

    async def warm_start() -> int:
        core = Segmenter(settings.segmenter_config())
        warmer = Warmer(store, core, asyncio.Lock(), lambda: everything, 10_000, Health(),
                        Metrics().redis_errors)
        warmer.start(everything)
        assert warmer._task is not None
        await warmer._task
        return len(core.cache)

    caplog.set_level(logging.INFO, logger="stream.warm")
    try:
        assert await warm_start() == 0  # a brand-new, empty store: nothing to warn about
        assert "no partition index" not in caplog.text
        assert "read 0 customer states" in caplog.text
        assert await indexed(store)  # and from now on the index is what is read
        # states but no index: an older deployment, which `segmenter reindex` is for
        await store.write([assignment(f"c{i}", i % 4, "s0") for i in range(30)], NOW)
        await r.delete(store.keys.partition_indexed, *[store.keys.partition(p) for p in
                                                       everything])
        caplog.clear()
        assert await warm_start() == 30
        assert "no partition index in Redis" in caplog.text
        assert "segmenter reindex" in caplog.text
    finally:
        await client.aclose()


def assigned(worker: WorkerProcess) -> list[int]:
    """The partitions of the worker's latest assignment (from its log)."""
    found = re.findall(r"partitions assigned: \[([\d, ]*)\]", worker.log())
    return [int(p) for p in found[-1].split(",") if p.strip()] if found else []


def _everywhere(r: aioredis.Redis) -> dict[str, Any]:
    """On a cluster, a server command for every primary (redis-py sends it to one node)."""
    return {"target_nodes": RedisCluster.PRIMARIES} if isinstance(r, RedisCluster) else {}


async def _calls(r: aioredis.Redis) -> dict[str, int]:
    """Calls per command since the last ``CONFIG RESETSTAT`` (on a cluster: all primaries)."""
    got = await r.info("commandstats", **_everywhere(r))
    per_node = got.values() if isinstance(r, RedisCluster) else [got]
    out: dict[str, int] = {}
    for stats in per_node:
        for name, s in stats.items():
            out[name] = out.get(name, 0) + int(s["calls"])
    return out


async def test_a_worker_taking_over_partitions_reads_only_their_customers(
        settings: Settings, tmp_path: Path, r: aioredis.Redis) -> None:
    await ensure_topics(settings)
    sim = ShopSimulator(customers=800, seed=5, days=10)
    await produce(settings, [(e["customer_id"].encode(), orjson.dumps(e))
                             for e in sim.history()])
    first = WorkerProcess(settings, tmp_path, "w1")
    second = dataclasses.replace(settings, web_port=free_port())
    workers = [first]
    prefix = settings.redis_prefix
    try:
        await first.wait_healthy()
        await wait_for(lambda: caught_up(settings), 180, "the worker to catch up")
        # each customer's partition, as its state says
        ids = sorted(sim.truth)
        async with r.pipeline(transaction=False) as pipe:
            for cid in ids:
                pipe.getrange(f"{prefix}state:{{{cid}}}", 0, 40)
            heads = await pipe.execute()
        partition_of = {c: int(h.split(b":")[0]) for c, h in zip(ids, heads, strict=True)}
        # set by the first warm start
        assert await r.get(layout(r, prefix).partition_indexed) == b"1"
        await r.config_resetstat(**_everywhere(r))
        workers.append(WorkerProcess(second, tmp_path, "w2"))
        await workers[1].wait_healthy()

        async def shared() -> bool:
            return all(metric(w, "segmenter_assigned_partitions") == 2 for w in workers)
        await wait_for(shared, 60, "each worker to own two partitions")
        for w in workers:
            mine = set(assigned(w))
            expected = sum(1 for p in partition_of.values() if p in mine)

            async def warmed(w: WorkerProcess = w, expected: int = expected) -> bool:
                return metric(w, "segmenter_cached_customers") == expected
            await wait_for(warmed, 30, f"{w.log_path.stem} to hold its partitions' customers")
        # the rebalance read the index, never the whole keyspace
        stats = await _calls(r)
        assert "cmdstat_scan" not in stats, stats.get("cmdstat_scan")
        assert stats["cmdstat_sscan"] >= 4
    finally:
        for w in workers:
            w.stop()
