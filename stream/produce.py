"""Producers of events: the shopper simulator and JSON-lines replay."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from models.simulator import DAY_MS, ShopSimulator
from stream.kafka_io import ensure_topics, make_producer
from stream.settings import Settings

log = logging.getLogger(__name__)


async def produce(
    producer: AIOKafkaProducer, topic: str, messages: Iterable[tuple[bytes | None, bytes]],
    rate: float = 0.0, limit: int | None = None,
) -> int:
    """Send ``(key, value)`` pairs, at most ``rate`` per second (0: as fast as possible)."""
    sent = 0
    started = time.monotonic()
    pending: list[asyncio.Future[Any]] = []
    for key, value in messages:
        if limit is not None and sent >= limit:
            break
        pending.append(await producer.send(topic, key=key, value=value))
        sent += 1
        if len(pending) >= 2000:
            await asyncio.gather(*pending)
            pending = []
        if rate > 0 and sent % max(1, int(rate / 20)) == 0:
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
    await asyncio.gather(*pending)
    return sent


def simulated_messages(sim: ShopSimulator, live: bool) -> Iterator[tuple[bytes, bytes]]:
    """History first, then (with ``live``) sessions stamped with the wall clock, forever."""
    for e in sim.history():
        yield e["customer_id"].encode(), orjson.dumps(e)
    while live:
        for e in sim.live(int(time.time() * 1000)):
            yield e["customer_id"].encode(), orjson.dumps(e)


async def simulate(settings: Settings, customers: int, events: int | None, rate: float,
                   days: float, seed: int, drift: float, live: bool) -> int:
    """Produce simulated shoppers into the events topic."""
    await ensure_topics(settings)
    now = int(time.time() * 1000)
    sim = ShopSimulator(customers, seed=seed, start_ms=now - int(days * DAY_MS), days=days,
                        drift=drift)
    producer = make_producer(settings)
    await producer.start()
    try:
        return await produce(producer, settings.events_topic, simulated_messages(sim, live),
                             rate=rate, limit=events)
    finally:
        await producer.stop()


def jsonl_messages(path: str) -> Iterator[tuple[bytes | None, bytes]]:
    """Lines of a JSON-lines file, keyed by their ``customer_id`` when it can be read.

    Unreadable lines are sent too: the worker dead-letters them with a reason, so a bad
    line is reported where every other bad event is, and nothing is lost.
    """
    with open(path, "rb") as fh:
        for n, line in enumerate(fh, 1):
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue
            key = None
            try:
                obj = orjson.loads(line)
                if isinstance(obj, dict) and isinstance(obj.get("customer_id"), str):
                    key = obj["customer_id"].encode()
            except orjson.JSONDecodeError:
                log.warning("%s:%d is not JSON; sent anyway, it will be dead-lettered", path, n)
            yield key, line


async def replay(settings: Settings, path: str, rate: float) -> int:
    """Produce a JSON-lines file into the events topic."""
    await ensure_topics(settings)
    producer = make_producer(settings)
    await producer.start()
    try:
        return await produce(producer, settings.events_topic, jsonl_messages(path), rate=rate)
    finally:
        await producer.stop()
