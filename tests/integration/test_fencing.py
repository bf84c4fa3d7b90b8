"""Leases with fencing tokens, for real: the worker holding the training and relay leases is
frozen (SIGSTOP) past its leases while events keep coming, the other worker takes over,
then the first resumes (SIGCONT). No older model may be published over a newer one, and
the changes topic must hold the Redis stream's changes, per customer in stream order (a
re-sent copy, identified by ``segmenter.change_id``, only where the contract allows one).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import signal
from pathlib import Path

import orjson
import redis.asyncio as aioredis

from models.simulator import ShopSimulator
from stream.embedded import free_port
from stream.kafka_io import ensure_topics
from stream.settings import Settings
from stream.shards import streams
from tests.integration.helpers import TopicReader, WorkerProcess, produce, wait_for
from tests.integration.layout import entries, layout
from tests.integration.test_model_lifecycle import caught_up, metric


async def holds(r: aioredis.Redis, prefix: str, worker: WorkerProcess) -> bool:
    """The worker holds the training and the changes relay's leases (a lease's value is
    ``host-pid-object``; on a cluster a relay lease per partition's stream)."""
    keys = layout(r, prefix)
    names = [keys.training_lease, *(keys.relay_lease(s) for s in
                                    await streams(r, keys, "changes", keys.changes))]
    async with r.pipeline(transaction=False) as pipe:  # (keys of several slots)
        for name in names:
            pipe.get(name)
        values = await pipe.execute()
    return all(v and int(v.decode().rsplit("-", 2)[1]) == worker.proc.pid for v in values)


async def watch_models(r: aioredis.Redis, prefix: str,
                       seen: list[tuple[int, str]]) -> None:
    """Record every published (version, checkpoint digest), read atomically, until cancelled."""
    while True:
        async with r.pipeline(transaction=True) as pipe:
            pipe.get(layout(r, prefix).model_version)
            pipe.get(layout(r, prefix).model)
            version, model = await pipe.execute()
        if version is not None:
            entry = (int(version), hashlib.sha1(model).hexdigest())
            if not seen or seen[-1] != entry:
                seen.append(entry)
        await asyncio.sleep(0.02)


async def test_a_frozen_lease_holder_never_publishes_after_its_successor(
        settings: Settings, tmp_path: Path, r: aioredis.Redis) -> None:
    await ensure_topics(settings)
    prefix = settings.redis_prefix
    sim = ShopSimulator(customers=600, seed=17, days=24)
    events = [(e["customer_id"].encode(), orjson.dumps(e)) for e in sim.history()]
    third = len(events) // 3
    await produce(settings, events[:third])
    first = WorkerProcess(settings, tmp_path, "w1")
    workers = [first]
    seen: list[tuple[int, str]] = []
    watcher = asyncio.create_task(watch_models(r, prefix, seen))
    frozen = False
    try:
        await first.wait_healthy()
        await wait_for(lambda: caught_up(settings), 120, "the first worker to catch up")

        async def holds_both() -> bool:
            return await holds(r, prefix, first) and int(
                await r.get(layout(r, prefix).model_version) or 0) > 0
        await wait_for(holds_both, 60, "the first worker to train and relay")
        workers.append(WorkerProcess(dataclasses.replace(settings, web_port=free_port()),
                                     tmp_path, "w2"))
        second = workers[1]
        await second.wait_healthy()

        async def shared() -> bool:
            return all(metric(w, "segmenter_assigned_partitions") == 2 for w in workers)
        await wait_for(shared, 60, "each worker to own two partitions")

        # freeze the holder; once the other holds both leases, events keep coming
        before = int(await r.get(layout(r, prefix).model_version) or 0)
        os.kill(first.proc.pid, signal.SIGSTOP)
        frozen = True
        await wait_for(lambda: holds(r, prefix, second), 60,
                       "the second worker to take both leases")
        await produce(settings, events[third:2 * third])

        async def published() -> bool:  # the new trainer learns from them
            return int(await r.get(layout(r, prefix).model_version) or 0) > before
        await wait_for(published, 60, "the second worker to publish a newer model")
        await wait_for(lambda: caught_up(settings), 120, "the second worker to catch up")

        # resume the first: it finds its leases gone and its tokens old
        os.kill(first.proc.pid, signal.SIGCONT)
        frozen = False
        await produce(settings, events[2 * third:])
        await wait_for(lambda: caught_up(settings), 120, "both workers to catch up")
        await first.wait_healthy()
        assert await holds(r, prefix, second)  # the successor keeps both

        # every change in the stream reaches the topic; read until all are there
        stream = [(i.encode(), f) for i, f in await entries(r, prefix, "changes")]
        want = {i for i, _ in stream}
        async with TopicReader(settings, settings.changes_topic) as reader:
            async def relayed() -> bool:
                got = {dict(m.headers)["segmenter.change_id"] for m in await reader.read()}
                return want <= got
            await wait_for(relayed, 60, "every change on the topic")
            messages = list(reader.messages)
    finally:
        watcher.cancel()
        if frozen:
            os.kill(first.proc.pid, signal.SIGCONT)
        for w in workers:
            w.stop()

    # models: versions only go up, and a version once published is never replaced
    versions = [v for v, _ in seen]
    assert versions == sorted(versions), seen
    assert len({v for v, _ in seen}) == len(seen), seen
    assert versions[-1] > before

    # changes: per customer, in stream order; copies only as re-sends of the same entry
    def order(change_id: bytes) -> tuple[int, int]:  # (on a cluster: <partition>:<entry id>)
        ms, seq = change_id.rsplit(b":", 1)[-1].split(b"-")
        return int(ms), int(seq)
    stream_chain: dict[bytes, list[bytes]] = {}
    for entry_id, fields in stream:
        cid = orjson.loads(fields[b"change"])["customer_id"].encode()
        stream_chain.setdefault(cid, []).append(entry_id)
    topic_chain: dict[bytes, list[bytes]] = {}
    for m in messages:
        topic_chain.setdefault(m.key, []).append(dict(m.headers)["segmenter.change_id"])
    copies = 0
    for cid, ids in topic_chain.items():
        keys = [order(i) for i in ids]
        assert keys == sorted(keys), f"{cid!r}: changes out of stream order: {ids}"
        firsts = list(dict.fromkeys(ids))
        copies += len(ids) - len(firsts)
        assert [i for i in firsts if i in want] == stream_chain.get(cid, []), cid
    assert copies <= len(messages) // 10, f"{copies} copies of {len(messages)} messages"
    assert "lease lost before sending" not in second.log()
