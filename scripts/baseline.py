"""The minimal loop that ``scripts.bench`` measures the worker against: aiokafka
``getmany`` + the same per-customer features + NumPy assignment + one pipelined ``HSET`` of
the five contract fields per batch + commit, in this process, nothing else."""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer

from models.events import parse_event
from models.features import CustomerState, to_model_space, update, vector
from stream.credentials import kafka_options, redis_options
from stream.redis_io import connect
from stream.settings import Settings


async def baseline(settings: Settings, total: int, centres: np.ndarray,
                   stages: dict[str, float] | None = None) -> float:
    """The minimal loop; returns events/s from first batch to last (and adds the time of its
    steps to ``stages``, by the worker's stage names)."""
    took = stages if stages is not None else {}
    clock = time.perf_counter
    redis = connect(settings.redis_url, **redis_options(settings))
    c = AIOKafkaConsumer(settings.events_topic, bootstrap_servers=settings.kafka,
                         group_id=f"baseline-{uuid.uuid4().hex[:6]}", enable_auto_commit=False,
                         auto_offset_reset="earliest", session_timeout_ms=6000,
                         max_partition_fetch_bytes=4 * 1024 * 1024, **kafka_options(settings))
    await c.start()
    states: dict[str, CustomerState] = {}
    half_life = 30 * 86_400_000
    done, first = 0, 0.0
    prefix = f"bl{uuid.uuid4().hex[:6]}:"
    try:
        while done < total:
            t0 = clock()
            batch = await c.getmany(timeout_ms=500, max_records=5000)
            if not batch:
                continue
            if not first:
                first = time.perf_counter()
            t1 = clock()
            changed, labels = assign(batch, states, centres, half_life)
            done += sum(len(msgs) for msgs in batch.values())
            t2 = clock()
            await write_segments(redis, prefix, changed, labels)
            t3 = clock()
            await c.commit()
            for stage, took_s in (("fetch", t1 - t0), ("parse+features", t2 - t1),
                                  ("write", t3 - t2), ("commit", clock() - t3)):
                took[stage] = took.get(stage, 0.0) + took_s
        return (total - 0) / (time.perf_counter() - first)
    finally:
        await c.stop()
        await redis.aclose()


def assign(batch: dict[Any, list[Any]], states: dict[str, CustomerState],
           centres: np.ndarray, half_life: int) -> tuple[list[str], list[int]]:
    """One batch of the minimal loop: features of every customer in it, standardised within
    the batch and assigned to the nearest of ``centres``; returns customers and labels."""
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
    return list(changed), ((z[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1).tolist()


async def write_segments(redis: Any, prefix: str, cids: list[str], labels: list[int]) -> None:
    """The five contract fields of each customer, one pipelined ``HSET`` each."""
    now = str(int(time.time() * 1000))
    async with redis.pipeline(transaction=False) as pipe:
        for cid, k in zip(cids, labels, strict=True):
            pipe.hset(f"{prefix}customer:{{{cid}}}", mapping={
                "segment": f"s{k}", "segment_name": "n", "model_version": "1",
                "updated_at": now, "confidence": "0.5"})
        await pipe.execute()
