"""Producers of events: the shopper simulator, and record batches built here (replay)."""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

from models.simulator import DAY_MS, ShopSimulator
from stream.credentials import kafka_options
from stream.kafka_io import ensure_topics, make_producer
from stream.settings import Settings

log = logging.getLogger(__name__)


class Progress:
    """Logs, every ``every_s`` seconds, how many events a producer sent and how fast."""

    def __init__(self, what: str, customers: Callable[[], int], every_s: float = 10.0) -> None:
        self.what, self.customers, self.every_s = what, customers, every_s
        self.started = self._last_at = time.monotonic()
        self._last_sent = 0

    def tick(self, sent: int, done: bool = False) -> None:
        """``sent`` so far; ``done``: the last call (always logs)."""
        now = time.monotonic()
        if not done and now - self._last_at < self.every_s:
            return
        rate = (sent - self._last_sent) / max(now - self._last_at, 1e-9)
        log.info("%s: %d events sent%s, %.0f events/s, %d customers", self.what, sent,
                 f" in {now - self.started:.1f} s" if done else "", rate, self.customers())
        self._last_at, self._last_sent = now, sent


async def produce(
    producer: AIOKafkaProducer, topic: str, messages: Iterable[tuple[bytes | None, bytes]],
    rate: float = 0.0, limit: int | None = None, progress: Progress | None = None,
) -> int:
    """Send ``(key, value)`` pairs, at most ``rate`` per second (0: as fast as possible);
    ``progress`` is told every 1000."""
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
        if progress is not None and sent % 1000 == 0:
            progress.tick(sent)
        if rate > 0 and sent % max(1, int(rate / 20)) == 0:
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
    await asyncio.gather(*pending)
    if progress is not None:
        progress.tick(sent, done=True)
    return sent


def _history(sim: ShopSimulator) -> Iterator[tuple[bytes, bytes]]:
    """The simulator's history, in event-time order."""
    for e in sim.history():
        yield e["customer_id"].encode(), orjson.dumps(e)


def _live(sim: ShopSimulator) -> Iterator[tuple[bytes, bytes]]:
    """Sessions stamped with the wall clock, forever."""
    while True:
        for e in sim.live(int(time.time() * 1000)):
            yield e["customer_id"].encode(), orjson.dumps(e)


async def simulate(settings: Settings, customers: int, events: int | None, rate: float,
                   days: float, seed: int, drift: float, live: bool,
                   history_rate: float | None = None) -> int:
    """Produce simulated shoppers into the events topic: ``days`` of history at
    ``history_rate`` events/s (None: ``rate``; 0: as fast as the broker takes them, a
    backfill), then, with ``live``, sessions stamped with the wall clock at ``rate``."""
    await ensure_topics(settings)
    now = int(time.time() * 1000)
    sim = ShopSimulator(customers, seed=seed, start_ms=now - int(days * DAY_MS), days=days,
                        drift=drift)
    producer = make_producer(settings)
    await producer.start()
    back = rate if history_rate is None else history_rate
    log.info("simulating %d customers into %r: %g days of history %s%s", customers,
             settings.events_topic, days,
             f"at {back:g} events/s" if back else "as a backfill (as fast as the broker takes it)",
             f", then live shoppers at {rate:g} events/s" if live else "")

    def known() -> int:
        return len(sim.truth)
    try:
        sent = await produce(producer, settings.events_topic, _history(sim), rate=back,
                             limit=events, progress=Progress("history", known))
        if live and (events is None or sent < events):
            log.info("history sent; live shoppers now, stamped with the wall clock")
            sent += await produce(producer, settings.events_topic, _live(sim), rate=rate,
                                  limit=None if events is None else events - sent,
                                  progress=Progress("live", known, every_s=60.0))
        return sent
    finally:
        await producer.stop()


def make_replay_producer(settings: Settings) -> AIOKafkaProducer:
    """A producer for :class:`BatchSender`: larger batches than the worker's (fewer, bigger
    requests), acknowledged by all replicas; no compression (lz4 is not a dependency, and
    gzip would cost more CPU than the broker link saves on a local network)."""
    return AIOKafkaProducer(bootstrap_servers=settings.kafka, acks="all",
                            max_batch_size=512 * 1024, max_request_size=4 * 1024 * 1024,
                            **kafka_options(settings))


class BatchSender:
    """Appends keyed messages to one record batch per partition and sends each batch when it
    is full: no await and no future per message (measured on the embedded broker: 280k
    messages/s, where one ``send()`` per message reaches 42k).

    Partitions are chosen as Kafka's default partitioner does (murmur2 of the key), so a
    customer's events land where every other producer puts them. Batches of a partition are
    sent in order; :attr:`ends` holds, per partition, the offset after the last acknowledged
    message. Call :meth:`send_full` when :attr:`full` is not empty, :meth:`flush` at the end.
    """

    def __init__(self, producer: AIOKafkaProducer, topic: str, partitions: list[int]) -> None:
        self.producer, self.topic, self.partitions = producer, topic, sorted(partitions)
        self.full: list[tuple[int, Any]] = []
        """Closed batches waiting for :meth:`send_full`: ``(partition, batch)``."""
        self.ends: dict[int, int] = {}
        self.acked = 0
        """Messages the broker has acknowledged."""
        self._open: dict[int, Any] = {}
        self._cache: dict[bytes, int] = {}
        self._inflight: collections.deque[tuple[asyncio.Future[Any], int]] = collections.deque()

    def partition(self, key: bytes | None) -> int:
        """Kafka's default partition of ``key`` (a random one without a key)."""
        if key is None:
            return random.choice(self.partitions)  # noqa: S311 (spreading load, not secrets)
        p = self._cache.get(key)
        if p is None:
            if len(self._cache) > 200_000:  # bounded: murmur2 in Python costs a few us a key
                self._cache.clear()
            p = self._cache[key] = self.partitions[
                (murmur2(key) & 0x7FFFFFFF) % len(self.partitions)]
        return p

    def add(self, key: bytes | None, value: bytes) -> None:
        """Append one message (a full batch moves to :attr:`full`)."""
        p = self.partition(key)
        batch = self._open.get(p)
        if batch is None:
            batch = self._open[p] = self.producer.create_batch()
        if batch.append(key=key, value=value, timestamp=None) is None:
            self.full.append((p, batch))
            batch = self._open[p] = self.producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:
                raise ValueError(f"a message of {len(value)} bytes does not fit in a batch")

    async def send_full(self) -> None:
        """Hand the full batches to the producer (waits while a partition's previous batch
        is still queued: the producer's back-pressure)."""
        full, self.full = self.full, []
        for p, batch in full:
            batch.close()
            future = await self.producer.send_batch(batch, self.topic, partition=p)
            self._inflight.append((future, batch.record_count()))
        while self._inflight and (self._inflight[0][0].done() or len(self._inflight) > 64):
            await self._settle()

    async def flush(self) -> None:
        """Send the open batches too and wait until the broker acknowledged everything;
        raises the producer's error if a batch failed."""
        self.full += [(p, b) for p, b in self._open.items() if b.record_count()]
        self._open.clear()
        await self.send_full()
        while self._inflight:
            await self._settle()

    async def _settle(self) -> None:
        future, count = self._inflight.popleft()
        meta = await future
        self.ends[meta.partition] = max(self.ends.get(meta.partition, 0), meta.offset + count)
        self.acked += count
