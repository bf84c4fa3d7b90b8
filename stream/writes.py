"""A batch's writes and the commit: the second half of :class:`stream.pipeline.EventPipeline`.

Each applied batch's Redis and Kafka work (dead letters, the model snapshot, erasures, new
segments with their change-stream entries) runs as one task while the next batch is applied;
one at a time and in order, so a customer's writes stay ordered. Its offsets become
committable only once that work is done, and :meth:`Writes.flush_and_commit` writes the other
changed states before committing: nothing is committed that Redis does not hold.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from models.core import Assignment, BatchResult, Segmenter
from stream.errors import RetriableError
from stream.kafka_io import send_dead_letters
from stream.metrics import Metrics
from stream.modelsync import ModelSync, Snapshot
from stream.redis_io import RedisStore
from stream.settings import Settings

log = logging.getLogger(__name__)


class Writes:
    """Writing, retrying and committing; the base of :class:`stream.pipeline.EventPipeline`,
    which sets these attributes and settles the core (:meth:`_settle`)."""

    settings: Settings
    store: RedisStore
    metrics: Metrics
    sync: ModelSync
    consumer: AIOKafkaConsumer | None
    producer: AIOKafkaProducer | None
    problem: str | None
    """What is wrong now (Kafka or Redis unreachable), for the health check; None: nothing."""
    last_commit: float
    processed: int
    dead_lettered: int
    freshness_sink: Any
    uncommitted_since: float
    _uncommitted: dict[TopicPartition, int]
    _writing: asyncio.Task[None] | None
    _drifts: int

    @property
    def segmenter(self) -> Segmenter:
        """The pure core (owned by :attr:`sync`, which may replace its model)."""
        return self.sync.seg

    async def _settle(self) -> None:
        raise NotImplementedError  # EventPipeline's

    async def _written(self) -> None:
        """Wait for the last batch's Redis work (its error, if any, is raised here)."""
        if self._writing is not None:
            writing, self._writing = self._writing, None
            await writing

    async def _write_batch(self, result: BatchResult, snap: Snapshot | None,
                           offsets: dict[TopicPartition, int], now_ms: int, version: int,
                           started: float) -> None:
        assert self.producer is not None
        if result.dead:
            await send_dead_letters(self.producer, self.settings.dlq_topic, result.dead)
        if snap is not None:
            await self._retry(functools.partial(self.sync.send, snap))
        if result.erased:
            await self._retry(functools.partial(self.store.erase, result.erased, now_ms,
                                                version))
        # Change messages reach the Redis stream atomically with each write; the relay
        # (stream.relay) forwards them to Kafka.
        changes, fenced = await self._retry(functools.partial(
            self.store.write, result.assignments, now_ms))
        if not self._uncommitted:
            self.uncommitted_since = time.time()
        self._uncommitted.update(offsets)
        self._observe(result, len(changes), fenced, started)

    async def flush_and_commit(self) -> None:
        """Write every changed state, then commit what was applied. Call under ``_lock``."""
        await self._settle()
        started = time.perf_counter()
        writes = self.segmenter.drain()
        if writes:
            _, fenced = await self._retry(functools.partial(
                self.store.write, writes, int(time.time() * 1000), refresh=True))
            self.metrics.fenced.inc(fenced)
        flushed = time.perf_counter()
        self.metrics.busy.labels("flush").inc(flushed - started)
        if self._uncommitted and await self._commit(dict(self._uncommitted)):
            self._uncommitted.clear()
            self.uncommitted_since = 0.0
        self.metrics.busy.labels("commit").inc(time.perf_counter() - flushed)

    def _observe(self, result: BatchResult, changes: int, fenced: int, started: float) -> None:
        m = self.metrics
        for (etype, outcome), n in result.counts.items():
            m.events.labels(etype, outcome).inc(n)
        now = time.time()
        # an evenly spaced sample bounds the cost per batch (the batch's first events waited
        # longest: a sample of its last ones would flatter the percentiles)
        for ts in result.event_ts[::max(1, len(result.event_ts) // 200)]:
            age = max(0.0, now - ts / 1000)
            m.freshness.observe(age)
            if self.freshness_sink is not None:
                self.freshness_sink.append(age)
        self.dead_lettered += len(result.dead)
        m.changes.inc(changes)
        m.fenced.inc(fenced)
        drift = self.segmenter.drift
        if drift.detections > self._drifts:
            m.drift.inc(drift.detections - self._drifts)
            self._drifts = drift.detections
            log.warning("drift: customers moved away from the segment centres (ADWIN); "
                        "refreshing the model and re-scoring")
        self.sync.observe_model()
        m.batch_seconds.observe(time.perf_counter() - started)
        self.processed += sum(result.counts.values())

    async def _write_rescored(self, writes: list[Assignment], now_ms: int) -> None:
        if not writes:
            return
        changes, fenced = await self._retry(functools.partial(self.store.write, writes,
                                                              now_ms))
        self.metrics.changes.inc(len(changes))
        self.metrics.fenced.inc(fenced)
        for a in writes:
            self.metrics.rescored.labels(a.reason).inc()

    async def _retry(self, call: Any) -> Any:
        """Wait out Redis outages with capped exponential back-off; never skip a batch."""
        delay = 0.2
        while True:
            try:
                result = await call()
                if self.problem and self.problem.startswith("Redis"):
                    self.problem = None
                return result
            except RetriableError as exc:
                self.problem = str(exc)
                self.metrics.redis_errors.inc()
                log.warning("%s; retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _commit(self, offsets: dict[TopicPartition, int]) -> bool:
        assert self.consumer is not None
        try:
            await self.consumer.commit(offsets)
            self.last_commit = time.time()
            self.metrics.commits.inc()
            self.metrics.last_commit.set(self.last_commit)
            return True
        except CommitFailedError as exc:
            # Partitions moved during the batch: the new owner re-reads from the last commit
            # and the offset fence in Redis makes the repeat harmless.
            log.warning("commit failed (%s); the batch will be re-delivered and deduplicated",
                        exc)
            return True
        except KafkaError as exc:  # broker unreachable: keep the offsets, commit later
            self.problem = f"Kafka: commit failed: {exc}"
            log.warning("commit failed (%s); will retry", exc)
            return False
