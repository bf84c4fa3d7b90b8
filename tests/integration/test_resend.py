"""Re-sent events change nothing, whatever their age (contract §1.1), on the real broker and
Redis: a whole stream sent again (a backfill run twice), and a recent slice of it (a producer
retry after an outage), with their original event ids. Every Redis key stays byte-identical
(states, hashes, sizes, profiles, model version), no change message is published, nothing is
learned, and what is refused is counted and dead-lettered as the contract says."""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path

import orjson
import redis.asyncio as aioredis

from models.simulator import ShopSimulator
from stream.kafka_io import read_lag_once
from stream.keys import Keys
from stream.settings import Settings
from stream.shards import streams
from tests.integration.helpers import WorkerProcess, consume_all, produce, wait_for

# Keys that change with the wall clock, not with events: leases and their holders (on a
# cluster a relay lease per stream shard, ``<stream>:relay-leader[:{<partition>}]``).
VOLATILE = re.compile(rb"(learner(:fence)?|relay-leader.*|samples|sample-index|"
                      rb"sample:\{[^}]*\}|sample:[^:]*)$")


async def snapshot(r: aioredis.Redis, prefix: str, cluster: bool = False) -> dict[bytes, object]:
    """Every key of the run, serialised by Redis itself (DUMP), leases aside; streams by
    their entries (a DUMP of a stream also holds when its readers last read). On a cluster
    also the global keys, in the slot of the tag ``{<prefix>}``."""
    found = [k async for k in r.scan_iter(match=f"{prefix}*", count=1000)]
    if cluster:
        found += [k async for k in r.scan_iter(match=Keys(prefix, True).model[:-5] + "*",
                                               count=1000)]
    keys = [k for k in sorted(found) if not VOLATILE.search(k)]
    async with r.pipeline(transaction=False) as pipe:
        for k in keys:
            pipe.type(k)
        kinds = await pipe.execute()
    async with r.pipeline(transaction=False) as pipe:
        for k, kind in zip(keys, kinds, strict=True):
            if kind == b"stream":
                pipe.xrange(k)
            elif kind == b"set":  # the partition index: members, whatever order they came in
                pipe.smembers(k)
            else:
                pipe.dump(k)
        values = await pipe.execute()
    return dict(zip(keys, values, strict=True))


async def change_count(r: aioredis.Redis, keys: Keys) -> int:
    """Change messages in the stream (on a cluster: in every partition's stream)."""
    return sum([await r.xlen(s) for s in await streams(r, keys, "changes", keys.changes)])


async def committed_all(settings: Settings, total: int) -> bool:
    rows = await read_lag_once(settings.kafka, settings.group, settings.events_topic)
    return sum(p.committed or 0 for p in rows) >= total


def outcomes(worker: WorkerProcess) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in re.finditer(r'^segmenter_events_total\{([^}]*)\} ([0-9.e+]+)$',
                         worker.metrics_text(), re.M):
        outcome = re.search(r'outcome="(\w+)"', m[1])
        if outcome:
            out[outcome[1]] = out.get(outcome[1], 0.0) + float(m[2])
    return out


async def test_a_stream_sent_twice_and_a_recent_slice_again_change_nothing(
        settings: Settings, tmp_path: Path, r: aioredis.Redis) -> None:
    # No re-scoring pass: it moves customers as wall-clock time fades their activity, which
    # would change keys between the two snapshots whatever was re-sent.
    settings = dataclasses.replace(settings, rescore_per_s=0)
    sim = ShopSimulator(400, seed=21, days=8)
    events = sorted(sim.history(), key=lambda e: e["timestamp"])
    messages: list[tuple[bytes | None, bytes | None]] = [
        (e["customer_id"].encode(), orjson.dumps(e)) for e in events]
    worker = WorkerProcess(settings, tmp_path)
    try:
        await worker.wait_healthy()
        await produce(settings, messages)
        sent = len(messages)
        await wait_for(lambda: committed_all(settings, sent), 120, "the stream")
        prefix = settings.redis_prefix
        before: dict[bytes, object] = {}
        since = time.monotonic()

        async def settled() -> bool:
            # nothing left to write: a model update, the re-assignments it brings and the
            # relay are done with the stream (every read agrees for three model polls)
            nonlocal before, since
            now = await snapshot(r, prefix, settings.redis_cluster)
            if now != before:
                before, since = now, time.monotonic()
            return time.monotonic() - since >= 3 * settings.model_poll_s

        await wait_for(settled, 60, "Redis to settle after the stream")
        keys = Keys(prefix, cluster=settings.redis_cluster)
        version = (await r.get(keys.model_version))
        assert version is not None and int(version) > 0
        changes = await change_count(r, keys)
        assert changes >= len(sim.truth)
        applied = outcomes(worker)

        # 1. the whole stream again (a backfill run twice): same ids, new offsets
        await produce(settings, messages)
        sent += len(messages)
        # 2. a recent slice again (a producer retry after an outage)
        recent = messages[-len(messages) // 10:]
        await produce(settings, recent)
        sent += len(recent)
        await wait_for(lambda: committed_all(settings, sent), 120, "the re-sent events")

        assert await snapshot(r, prefix, keys.cluster) == before  # byte-identical, every key
        assert await change_count(r, keys) == changes  # no change message
        assert await r.get(keys.model_version) == version  # nothing learned
        got = outcomes(worker)
        refused = {o: got.get(o, 0.0) - applied.get(o, 0.0) for o in ("duplicate", "late")}
        assert got.get("processed") == applied.get("processed")
        assert refused["duplicate"] + refused["late"] == len(messages) + len(recent)
        assert refused["duplicate"] >= len(recent)  # the recent slice is within the lateness
        # the late ones reach the dead-letter topic with reason "late"
        dead = await consume_all(settings, settings.dlq_topic, int(refused["late"]), 60)
        reasons = [dict(m.headers)["segmenter.error.reason"] for m in dead]
        assert len(reasons) == refused["late"] and set(reasons) == {b"late"}
    finally:
        assert worker.stop() == 0, worker.log()
