"""The two processes beside the probes of :mod:`scripts.bench_freshness`: the background
load (live sessions from a batched producer) and the minimal loop the worker is compared
with (``getmany``, per-customer features, NumPy assignment, one pipelined ``HSET`` per
batch, commit)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import numpy as np
import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer

from models.events import parse_event
from models.features import CustomerState, to_model_space, update, vector
from models.simulator import ShopSimulator
from stream.produce import BatchSender, make_replay_producer
from stream.settings import Settings

CUSTOMERS = 20_000
PARTITIONS = 4


def load(kafka: str, topic: str, rate: float, stop: Any, seed: int) -> None:
    """Background load (own process): live sessions at ``rate`` events/s, flushed every
    20 ms by a batched producer."""
    asyncio.run(_load_async(kafka, topic, rate, stop, seed))


async def _load_async(kafka: str, topic: str, rate: float, stop: Any, seed: int) -> None:
    now = int(time.time() * 1000)
    sim = ShopSimulator(CUSTOMERS, seed=seed, start_ms=now, days=0, prefix="bg")
    pool: list[dict[str, Any]] = []
    while len(pool) < int(rate * 2) + 1000:  # sessions re-stamped as they are sent
        pool += sim.live(now)
    producer = make_replay_producer(Settings(kafka=kafka))
    await producer.start()
    try:
        sender = BatchSender(producer, topic, list(range(PARTITIONS)))
        started, sent = time.monotonic(), 0
        while not stop.is_set():
            due = int((time.monotonic() - started) * rate)
            stamp = int(time.time() * 1000)
            while sent < due:
                e = pool[sent % len(pool)]
                sender.add(e["customer_id"].encode(), orjson.dumps(
                    {**e, "event_id": f"{e['event_id']}-{sent}", "timestamp": stamp}))
                sent += 1
            await sender.flush()
            await asyncio.sleep(0.02)
    finally:
        await producer.stop()


def loop(kafka: str, redis_url: str, topic: str, prefix: str, wait_ms: int, stop: Any) -> None:
    """The minimal loop (own process) until ``stop`` is set."""
    asyncio.run(_loop_async(kafka, redis_url, topic, prefix, wait_ms, stop))


async def _loop_async(kafka: str, redis_url: str, topic: str, prefix: str, wait_ms: int,
                      stop: Any) -> None:
    centres = np.random.default_rng(0).normal(size=(6, 18))
    redis = aioredis.from_url(redis_url)
    c = AIOKafkaConsumer(topic, bootstrap_servers=kafka, group_id=f"loop-{uuid.uuid4().hex[:6]}",
                         enable_auto_commit=False, auto_offset_reset="latest",
                         max_partition_fetch_bytes=4 * 1024 * 1024, fetch_max_wait_ms=wait_ms)
    await c.start()
    states: dict[str, CustomerState] = {}
    half_life = 30 * 86_400_000
    try:
        while not stop.is_set():
            batch = await c.getmany(timeout_ms=200, max_records=5000)
            if not batch:
                continue
            changed: dict[str, CustomerState] = {}
            for msgs in batch.values():
                for m in msgs:
                    e = parse_event(m.value, m.key)
                    st = states.get(e.customer_id) or states.setdefault(
                        e.customer_id, CustomerState(e.customer_id))
                    update(st, e, half_life)
                    changed[e.customer_id] = st
            x = np.asarray([to_model_space(vector(s, half_life)) for s in changed.values()])
            z = (x - x.mean(0)) / (x.std(0) + 1e-9)
            labels = ((z[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
            now = str(int(time.time() * 1000))
            async with redis.pipeline(transaction=False) as pipe:
                for cid, k in zip(changed, labels.tolist(), strict=True):
                    pipe.hset(f"{prefix}customer:{{{cid}}}", mapping={
                        "segment": f"s{k}", "segment_name": "n", "model_version": "1",
                        "updated_at": now, "confidence": "0.5"})
                await pipe.execute()
            await c.commit()
    finally:
        await c.stop()
        await redis.aclose()
