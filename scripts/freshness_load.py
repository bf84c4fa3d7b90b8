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

from models.features import CustomerState
from models.simulator import ShopSimulator
from scripts.baseline import assign, write_segments
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
            await write_segments(redis, prefix, *assign(batch, states, centres, half_life))
            await c.commit()
    finally:
        await c.stop()
        await redis.aclose()
