"""Writing what a batch decided, then committing its offsets.

Each applied batch's Redis and Kafka work (dead letters, the model snapshot, erasures, new
segments with their change-stream entries) runs as one task while the next batch is applied:
one at a time and in order, so a customer's writes stay ordered. Its offsets become
committable only once that work is done, and :meth:`BatchWriter.flush_and_commit` writes the
other changed states before committing: nothing is committed that Redis does not hold.

A flush can also go out in slices between batches (:meth:`BatchWriter.begin_flush`), in the
batches' queue, so a live event waits behind one slice, not a whole flush. Its commit follows
the last slice and covers the offsets as of the flush point (what later batches applied
waits for the next flush). A slice writes its states as they are then, fenced by offset; an
erasure or a link record written meanwhile takes the customer out of the slices to come.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Container
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from models.config import BatchResult
from models.core import Parsed, Segmenter
from models.records import Assignment
from models.state import CustomerState
from models.stitching import Links
from stream.errors import reason
from stream.health import Health, retry
from stream.kafka_io import send_dead_letters
from stream.metrics import Metrics
from stream.modelsync import ModelSync, Snapshot
from stream.redis_io import RedisStore
from stream.stitch_io import Stitching

log = logging.getLogger(__name__)
Encode = Callable[[list[CustomerState]], list[Assignment]]
"""Full writes of customer states (:func:`stream.slices.full_writes`)."""


class BatchWriter:
    """Writes batches to Redis (and dead letters to Kafka) and commits their offsets.

    Parameters
    ----------
    store, sync
        Redis: customer writes and erasures; model snapshots.
    consumer, producer
        Commits go to the consumer's group; dead letters through the producer.
    dlq_topic
        The dead-letter topic.
    stitching
        Identity stitching's events topic and ``SEGMENTER_MAX_ANONYMOUS_IDS``
        (:class:`stream.stitch_io.Stitching`).
    """

    def __init__(self, store: RedisStore, sync: ModelSync, metrics: Metrics, health: Health,
                 consumer: AIOKafkaConsumer, producer: AIOKafkaProducer,
                 dlq_topic: str, stitching: tuple[str, int]) -> None:
        self.store, self.sync, self.metrics, self.health = store, sync, metrics, health
        self.consumer, self.producer, self.dlq_topic = consumer, producer, dlq_topic
        self.stitching = Stitching(store, producer, *stitching)
        self.last_commit = 0.0
        self.uncommitted_since = 0.0  # when the oldest uncommitted batch was written
        self.freshness_sink: Any = None  # a deque that receives recent freshness samples
        self._uncommitted: dict[TopicPartition, int] = {}
        self._writing: asyncio.Task[None] | None = None  # the last batch's Redis work
        self._erasing: set[str] = set()  # customers it erases
        # a flush in slices: states drained and not written yet, by customer (in order), what
        # runs after them, and the offsets their commit covers (None: no flush under way)
        self._slices: dict[str, CustomerState] = {}
        self._encode: Encode = lambda _: []
        self._then: Callable[[], Awaitable[Any]] | None = None
        self._flush_offsets: dict[TopicPartition, int] | None = None
        self._flush_at = 0.0  # when it began: what stays uncommitted after it is newer
        self.flushed = asyncio.Event()
        """Set while no flush in slices is under way."""
        self.flushed.set()

    async def retry(self, call: Callable[[], Awaitable[Any]]) -> Any:
        """:func:`stream.health.retry` for this worker."""
        return await retry(call, self.health, self.metrics.redis_errors)

    async def written(self) -> None:
        """Wait for the last batch's Redis work (its error, if any, is raised here)."""
        if self._writing is not None:
            writing, self._writing = self._writing, None
            await writing
            self._erasing = set()

    async def load(self, core: Segmenter, parsed: Parsed) -> dict[str, CustomerState]:
        """States of the batch's customers that the core does not hold, read from Redis;
        the link records of linked anonymous ids found go to the core's stitcher."""
        links: Links = {}
        missing = core.missing(parsed)
        if not self._erasing.isdisjoint(missing):  # read once the erasure is done, or the
            await self.written()  # state it deletes would come back
        loaded: dict[str, CustomerState] = await self.retry(functools.partial(
            self.store.load_states, missing, links))
        core.stitch.load(links)
        return loaded

    async def write_batch(self, result: BatchResult, snap: Snapshot | None,
                          offsets: dict[TopicPartition, int], now_ms: int, version: int,
                          started: float) -> None:
        """Start the batch's Redis work once the previous batch's is done; returns then."""
        if self._slices:  # a slice still to come must not bring them back
            for cid in [*result.erased, *(link[0] for link in result.linked),
                        *(m[0] for m in result.merged)]:
                self._slices.pop(cid, None)
        await self.written()
        self._erasing = set(result.erased)
        self._writing = asyncio.create_task(
            self._write(result, snap, offsets, now_ms, version, started))

    async def _write(self, result: BatchResult, snap: Snapshot | None,
                     offsets: dict[TopicPartition, int], now_ms: int, version: int,
                     started: float) -> None:
        if result.dead:
            await send_dead_letters(self.producer, self.dlq_topic, result.dead)
        if snap is not None:
            await self.retry(functools.partial(self.sync.send, snap))
        stitching = self.stitching
        if result.erased:  # their linked anonymous ids too: at once, then in order
            linked = await self.retry(functools.partial(stitching.linked, result.erased))
            result.produce.extend((a.encode(), None, b"erase") for a in linked)
            await self.retry(functools.partial(self.store.erase, result.erased, now_ms,
                                               version))
        fenced = await self.retry(functools.partial(stitching.write_links, result.linked))
        await self.retry(functools.partial(stitching.unlink, result.unlinked))
        # Change messages reach the Redis stream atomically with each write; the relay
        # (stream.relay) forwards them to Kafka.
        changes, fenced_now = await self.retry(functools.partial(
            self.store.write, result.assignments, now_ms))
        changes += await self.retry(functools.partial(stitching.mirror, result.merged,
                                                      now_ms, result.produce))
        # what the batch produces (identity stitching) is acknowledged before its commit
        await stitching.produce(result.produce)
        fenced += fenced_now
        if not self._uncommitted:
            self.uncommitted_since = time.time()
        self._uncommitted.update(offsets)
        self._observe(result, len(changes), fenced, started)

    @property
    def flushing(self) -> bool:
        """A flush in slices is under way (:meth:`flush_step` goes on with it)."""
        return self._flush_offsets is not None

    async def begin_flush(self, drained: list[CustomerState], cached: Container[str],
                          encode: Encode,
                          then: Callable[[], Awaitable[Any]] | None, size: int) -> None:
        """Start a flush in slices of the ``drained`` states (``encode``: their full writes,
        built as each slice goes out, :mod:`stream.slices`) and write the first
        :meth:`flush_step`; ``then`` runs after the last slice, and the commit covers what
        was applied until now. Those not in ``cached`` (evicted by the drain) are written at
        once: a batch would read them from Redis. The caller has settled the core and waited
        for :meth:`written`."""
        evicted = [st for st in drained if st.customer_id not in cached]
        if evicted:
            await self._write_slice(encode(evicted))
        self._slices.update((st.customer_id, st) for st in drained
                            if st.customer_id in cached)
        self._encode, self._then, self._flush_offsets = encode, then, dict(self._uncommitted)
        self._flush_at = time.time()
        self.flushed.clear()
        await self.flush_step(size)

    async def between_flushes(self, lock: asyncio.Lock) -> None:
        """Take ``lock`` at a moment no flush in slices is under way."""
        while True:
            await self.flushed.wait()
            await lock.acquire()
            if not self.flushing:
                return
            lock.release()

    async def rescore(self, lock: asyncio.Lock, settle: Callable[[], Awaitable[None]],
                      rescore: Callable[[int], list[Assignment]], budget: int,
                      size: int) -> None:
        """Re-score ``budget`` customers (``rescore``: the core's) in slices of ``size`` (0:
        at once), each under ``lock`` between flushes in slices and after ``settle``, and
        write those who moved: batches go on between two slices, as with the flush."""
        while budget > 0:
            n = min(budget, size or budget)
            budget -= n
            await self.between_flushes(lock)
            try:
                await settle()
                await self.write_rescored(rescore(n), int(time.time() * 1000))
            finally:
                lock.release()

    async def flush_step(self, size: int) -> bool:
        """Write the next ``size`` states of the flush under way (0: all of them), in order
        with the batches' work; after the last, run its ``then`` and commit. Returns True
        once the flush is done (committed, or the commit left for later)."""
        if self._slices:
            ids = list(itertools.islice(self._slices, size)) if size > 0 else list(self._slices)
            started = time.perf_counter()  # (building the writes: main thread, as the I/O)
            part = self._encode([self._slices.pop(cid) for cid in ids])
            self.metrics.busy.labels("flush").inc(time.perf_counter() - started)
            await self.written()
            self._writing = asyncio.create_task(self._write_slice(part))
            if self._slices or size > 0:  # (in slices, the last one's write overlaps too)
                return False
        await self.written()
        then, self._then = self._then, None
        offsets, self._flush_offsets = self._flush_offsets or {}, None
        await self._finish(then, offsets)
        self.flushed.set()
        return True

    async def _write_slice(self, part: list[Assignment]) -> None:
        started = time.perf_counter()
        _, fenced = await self.retry(functools.partial(
            self.store.write, part, int(time.time() * 1000), refresh=True))
        self.metrics.fenced.inc(fenced)
        self.metrics.busy.labels("flush").inc(time.perf_counter() - started)

    async def flush_and_commit(self, drained: list[Assignment],
                               then: Callable[[], Awaitable[Any]] | None = None) -> None:
        """Write ``drained`` (every other changed state) after what a flush in slices has
        left, run ``then`` (what must follow the writes before the commit: RFM names that
        moved with them), then commit what was applied. The caller has settled the core and
        waited for :meth:`written`."""
        drained = [*self._encode(list(self._slices.values())), *drained]
        self._slices, self._then, self._flush_offsets = {}, None, None
        if drained:
            await self._write_slice(drained)
        await self._finish(then, dict(self._uncommitted))
        self.flushed.set()

    async def _finish(self, then: Callable[[], Awaitable[Any]] | None,
                      offsets: dict[TopicPartition, int]) -> None:
        started = time.perf_counter()
        if then is not None:
            try:
                await then()
            except Exception as exc:  # noqa: BLE001 - names catch up at the next commit
                log.warning("RFM names not brought up to date: %r", exc)
        flushed = time.perf_counter()
        self.metrics.busy.labels("flush").inc(flushed - started)
        if offsets and await self._commit(offsets):
            for tp, offset in offsets.items():  # (later batches' offsets wait for their flush)
                if self._uncommitted.get(tp) == offset:
                    del self._uncommitted[tp]
            self.uncommitted_since = self._flush_at if self._uncommitted else 0.0
        self.metrics.busy.labels("commit").inc(time.perf_counter() - flushed)

    async def write_rescored(self, writes: list[Assignment], now_ms: int,
                             rescored: bool = True) -> None:
        """Write customers re-scored without a new event (``rescored``: counted as such;
        False for memberships that moved without their segment)."""
        if not writes:
            return
        changes, fenced = await self.retry(functools.partial(self.store.write, writes,
                                                             now_ms))
        self.metrics.changes.inc(len(changes))
        self.metrics.fenced.inc(fenced)
        for a in writes if rescored else ():
            self.metrics.rescored.labels(a.reason).inc()

    def _observe(self, result: BatchResult, changes: int, fenced: int, started: float) -> None:
        m = self.metrics
        for (etype, outcome), n in result.counts.items():
            m.events.labels(etype, outcome).inc(n)
        now_ms = time.time() * 1000
        # an evenly spaced sample bounds the cost per batch (the batch's first events waited
        # longest: a sample of its last ones would flatter the percentiles). Freshness runs
        # from the record's arrival in Kafka, not from event time: a backfilled or offline-
        # synced event is old by event time but was processed as fast as any other.
        step = max(1, len(result.event_ts) // 200)
        for arrived, ts in zip(result.arrived_ts[::step], result.event_ts[::step],
                               strict=True):
            if arrived < 0:  # no record timestamp
                continue
            age = max(0.0, now_ms - arrived) / 1000
            m.freshness.observe(age)
            m.lateness.observe(max(0.0, arrived - ts) / 1000)
            if self.freshness_sink is not None:
                self.freshness_sink.append(age)
        m.changes.inc(changes)
        m.fenced.inc(fenced)
        m.batch_seconds.observe(time.perf_counter() - started)

    async def _commit(self, offsets: dict[TopicPartition, int]) -> bool:
        try:
            await self.consumer.commit(offsets)
            self.last_commit = time.time()
            self.metrics.commits.inc()
            self.metrics.last_commit.set(self.last_commit)
            self.health.clear("commit")
            return True
        except CommitFailedError as exc:
            # Partitions moved during the batch: the new owner re-reads from the last commit
            # and the offset fence in Redis makes the repeat harmless.
            log.warning("commit failed (%s); the batch will be re-delivered and deduplicated",
                        reason(exc))
            return True
        except IllegalStateError as exc:
            # Offsets of partitions handed over since they were taken (aiokafka refuses them
            # before asking the broker): not ours to commit any more; the new owner re-reads
            # from the last commit, fenced. Retrying them would stall every commit for good.
            owned = self.consumer.assignment()
            kept = {tp: o for tp, o in offsets.items() if tp in owned}
            log.warning("commit: %s; committing the %d partitions still assigned", reason(exc),
                        len(kept))
            return await self._commit(kept) if kept else True
        except KafkaError as exc:  # broker unreachable: keep the offsets, commit later
            self.health.report("commit", f"Kafka: commit failed: {reason(exc)}")
            log.warning("commit failed (%s); will retry", reason(exc))
            return False
