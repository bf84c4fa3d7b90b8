"""The interval flush in slices (``stream.writes``, issue #21), on the real broker and Redis:
whatever the slicing, Redis ends exactly as with flushes written at once, each commit covers
the offsets as of its flush point (never an event whose state Redis does not hold), and a
customer erased between two slices is not written back by a later one.

The events are real records of the test's topic; the core applies them in small batches (as
a caught-up worker does) and a :class:`stream.writes.BatchWriter` writes them, a flush every
few batches, in slices of 5, 13 or all at once. The cache holds fewer customers than the
batches touch, so every drain evicts some, whom the next batches read back from Redis.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import time
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from models.core import CONTROL_HEADER, Record, Segmenter
from models.simulator import ShopSimulator
from stream.credentials import kafka_options
from stream.health import Health
from stream.kafka_io import ensure_topics
from stream.metrics import Metrics
from stream.modelsync import ModelSync
from stream.redis_io import RedisStore, connect
from stream.settings import Settings
from stream.slices import drain_states, full_writes
from stream.writes import BatchWriter
from tests.integration.helpers import consume_all, produce

NOW_MS = 1_767_225_600_000
BATCH, FLUSH_EVERY = 40, 5  # records per batch; batches between two flush points


async def run(settings: Settings, recs: list[Record],
              size: int) -> tuple[str, list[tuple[dict[TopicPartition, int],
                                                  dict[TopicPartition, int]]]]:
    """Apply ``recs`` and write them with flushes in slices of ``size`` (0: at once) under a
    prefix of their own. The batch after the first flush point erases the last customer that
    flush drained (in slices: one still to be written). Returns the prefix and, per finished
    flush, the offsets applied at its flush point and what the group had committed then."""
    prefix = f"{settings.redis_prefix}s{size}:"
    core = Segmenter(dataclasses.replace(settings.segmenter_config(), cache_size=20,
                                         trains=True))
    writer, consumer, producer = await writer_on(settings, prefix)
    store, tps = writer.store, consumer.assignment()
    applied: dict[TopicPartition, int] = {}
    flushes: list[tuple[dict[TopicPartition, int], dict[TopicPartition, int]]] = []
    at_flush: dict[TopicPartition, int] = {}
    drained: list[Any] = []
    held: dict[str, tuple[int, int]] = {}
    erase, returned = "", 0
    try:
        for n, i in enumerate(range(0, len(recs), BATCH)):
            part = recs[i:i + BATCH]
            if n == FLUSH_EVERY:  # (not a record of the topic: no offset to commit)
                erase = [st.customer_id for st in drained if st.customer_id in core.cache][-1]
                assert not size or erase in writer._slices  # between two slices
                part = [*part, Record(settings.events_topic, 0, -1, erase.encode(), None,
                                      ((CONTROL_HEADER, b"erase"),))]
            parsed = core.parse(part)
            if writer.flushing:  # evicted by the drain, read back before its last slice
                returned += len(core.missing(parsed) & held.keys())
            res = core.apply(parsed, await writer.load(core, parsed))
            offsets = {TopicPartition(r.topic, r.partition): r.offset + 1 for r in part
                       if r.offset >= 0}
            applied.update(offsets)
            await writer.write_batch(res, None, offsets, NOW_MS, core.model.version,
                                     time.perf_counter())
            if writer.flushing:
                done = await writer.flush_step(size)
            elif n % FLUSH_EVERY == FLUSH_EVERY - 1:
                await writer.written()
                drained, again = drain_states(core)
                at_flush = dict(applied)
                held = {st.customer_id: (st.partition, st.offset) for st in drained}
                await writer.begin_flush(drained, core.cache.states,
                                         functools.partial(full_writes, core, again=again),
                                         None, size)
                done = not writer.flushing
            else:
                continue
            if done:  # what the commit covered, Redis holds
                flushes.append((at_flush, await committed(consumer, tps)))
                await check_held(store, held, erase)
        await writer.written()
        await writer.flush_and_commit(core.drain())
        assert await committed(consumer, tps) == applied
        assert returned or not size
    finally:
        await consumer.stop()
        await producer.stop()
        await store.r.aclose()
    return prefix, flushes


async def writer_on(settings: Settings,
                    prefix: str) -> tuple[BatchWriter, AIOKafkaConsumer, AIOKafkaProducer]:
    """A writer to Redis under ``prefix``, committing for a group of its own (started)."""
    store = RedisStore(connect(settings.redis_url, cluster=settings.redis_cluster), prefix,
                       10_000)
    metrics = Metrics()
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka, enable_auto_commit=False,
                                group_id=f"{settings.group}-{prefix}", **kafka_options(settings))
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka, **kafka_options(settings))
    await consumer.start()
    await producer.start()
    consumer.assign([TopicPartition(settings.events_topic, p)
                     for p in range(settings.partitions)])
    return (BatchWriter(store, ModelSync(store, metrics), metrics, Health(), consumer,
                        producer, settings.dlq_topic, (settings.events_topic, 10)),
            consumer, producer)


async def committed(consumer: AIOKafkaConsumer,
                    tps: set[TopicPartition]) -> dict[TopicPartition, int]:
    out = {tp: await consumer.committed(tp) for tp in tps}
    return {tp: o for tp, o in out.items() if o is not None}


async def check_held(store: RedisStore, held: dict[str, tuple[int, int]], erased: str) -> None:
    """Redis holds each state drained (its partition and offset then), or a newer one."""
    for cid, (partition, offset) in held.items():
        raw = await store.r.get(store.keys.state(cid))
        if cid == erased:
            continue
        assert raw is not None, cid
        p, o, _ = raw.split(b":", 2)
        assert int(p) == partition and int(o) >= offset, cid


async def dump(r: aioredis.Redis, prefix: str) -> dict[str, Any]:
    """Every key under ``prefix`` (without it): strings, and hashes without the write time."""
    out: dict[str, Any] = {}
    async for key in r.scan_iter(match=f"{prefix}*", count=1000):
        name = key.decode()[len(prefix):]
        kind = (await r.type(key)).decode()
        if kind == "string":
            out[name] = await r.get(key)
        elif kind == "hash" and name.startswith("moved:"):  # Redis Cluster's layout: the
            out[name] = sorted(await r.hkeys(key))  # outboxes applied, by entry ids (times)
        elif kind == "hash":
            out[name] = {k: v for k, v in (await r.hgetall(key)).items()
                         if k != b"updated_at"}
        elif kind == "stream":  # the change messages: as many, same customers and segments
            out[name] = sorted(orjson.dumps(sorted(
                (k, v) for k, v in f.items() if k not in (b"at", b"updated_at", b"ts"))
                ) for _, f in await r.xrange(key))
    return out


async def test_same_final_state_whatever_the_slicing(settings: Settings,
                                                     r: aioredis.Redis) -> None:
    await ensure_topics(settings)
    # customers in turn (each one's events in order): every batch touches most of them, so
    # the cache (20) evicts at every drain customers whom the next batch reads back
    sim = ShopSimulator(customers=60, seed=5, days=30)
    mine: dict[str, list[dict[str, Any]]] = {}
    for e in sim.history():
        mine.setdefault(e["customer_id"], []).append(e)
    events = [e for turn in itertools.zip_longest(*mine.values()) for e in turn if e][:6000]
    await produce(settings, [(e["customer_id"].encode(), orjson.dumps(e)) for e in events])
    msgs = await consume_all(settings, settings.events_topic, len(events))
    turn = {e["event_id"]: i for i, e in enumerate(events)}  # applied as produced
    msgs.sort(key=lambda m: turn[orjson.loads(m.value)["event_id"]])
    recs = [Record(m.topic, m.partition, m.offset, m.key, m.value) for m in msgs]
    reference, ref_flushes = await run(settings, recs, 0)
    assert len(ref_flushes) >= 10
    want = await dump(r, reference)
    assert all(got == at for at, got in ref_flushes)
    for size in (5, 13):
        prefix, flushes = await run(settings, recs, size)
        assert len(flushes) >= 3
        # a flush in slices commits what was applied at its flush point, no more
        assert all(got == at for at, got in flushes)
        assert await dump(r, prefix) == want, f"slices of {size}"


async def test_an_event_right_after_an_erasure_does_not_bring_back_the_erased(
        settings: Settings, r: aioredis.Redis) -> None:
    """The batch after an erasure reads the customer from Redis while the erasure may still
    be on its way there: the read waits for it (it once brought the erased state back)."""
    await ensure_topics(settings)
    sim = ShopSimulator(customers=3, seed=2, days=5)
    cid = "c000001"
    mine = [e for e in sim.history() if e["customer_id"] == cid][:5]
    await produce(settings, [(cid.encode(), orjson.dumps(e)) for e in mine])
    msgs = sorted(await consume_all(settings, settings.events_topic, len(mine)),
                  key=lambda m: m.offset)
    recs = [Record(m.topic, m.partition, m.offset, m.key, m.value) for m in msgs]
    erase = Record(settings.events_topic, recs[0].partition, -1, cid.encode(), None,
                   ((CONTROL_HEADER, b"erase"),))
    prefix = f"{settings.redis_prefix}e:"
    writer, consumer, producer = await writer_on(settings, prefix)
    core = Segmenter(settings.segmenter_config())
    try:
        for n, part in enumerate((recs[:4], [erase], recs[4:])):  # each batch's write
            parsed = core.parse(part)  # still under way when the next batch reads
            res = core.apply(parsed, await writer.load(core, parsed))
            await writer.write_batch(res, None, {}, NOW_MS, 0, time.perf_counter())
            if n == 0:
                await writer.written()
                await writer.flush_and_commit(core.drain())
        await writer.written()
        await writer.flush_and_commit(core.drain())
        assert core.cache.states[cid].events_total == 1
        assert await r.hget(f"{prefix}customer:{{{cid}}}", "events") == b"1"
    finally:
        await consumer.stop()
        await producer.stop()
        await writer.store.r.aclose()
