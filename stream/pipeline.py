"""The hot path: a batched consumer of the events topic, run as a service of the Faust app.

Per batch: ``getmany`` -> validate -> load missing states from Redis -> features, learning
and assignment (pure core) -> dead letters to Kafka -> atomic per-customer Redis writes ->
change messages to Kafka -> commit. Nothing is committed before Redis has it, so a crash
re-delivers, and re-delivered events are dropped by offset and event id.

The next two batches are read and validated (in a helper process: :mod:`stream.parsing`)
while the current one is applied, and model updates run in another (:mod:`stream.learner`)
while the core goes on with the events after them. Writing and committing are :mod:`stream.writes`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from models.core import Parsed, Segmenter
from stream.learner import Learner
from stream.metrics import Metrics
from stream.modelsync import ModelSync
from stream.parsing import Validator, decode
from stream.redis_io import RedisStore
from stream.settings import Settings
from stream.writes import Writes

log = logging.getLogger(__name__)

Fetched = tuple[dict[TopicPartition, list[Any]], Parsed]
_PARSE_STEP = 2000  # records validated inline between yields to the batch being applied
_AHEAD = 2  # batches read and validated ahead of the one being applied


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, pipeline: EventPipeline) -> None:
        self.pipeline = pipeline

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        # Hand over cleanly: everything applied is written and committed before the new
        # owner starts; then forget our copies, which another worker may change from now on.
        async with self.pipeline._lock:
            await self.pipeline.flush_and_commit()
            self.pipeline.segmenter.forget_partitions({tp.partition for tp in revoked})
        log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("partitions assigned: %s", sorted(tp.partition for tp in assigned))
        self.pipeline.warm({tp.partition for tp in assigned})


class EventPipeline(Writes):
    """Consumes the events topic in batches and keeps segments in Redis current."""

    def __init__(self, settings: Settings, store: RedisStore, metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.last_poll = 0.0
        self.last_commit = 0.0
        self.processed = 0
        self.dead_lettered = 0
        self.freshness_sink: Any = None  # a deque that receives recent freshness samples
        self.problem: str | None = None
        self._stopping = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.sync = ModelSync(store, Segmenter(settings.segmenter_config()), metrics,
                              settings.segmenter_config().refresh_sample)
        self._drifts = 0
        self._uncommitted: dict[TopicPartition, int] = {}
        self.uncommitted_since = 0.0  # when the oldest uncommitted batch was written
        self._lock = asyncio.Lock()
        self._reading = asyncio.Lock()  # one getmany and validation at a time (_fetch)
        self._writing: asyncio.Task[None] | None = None  # the last batch's Redis work
        self._warming: asyncio.Task[None] | None = None
        self.validator = Validator(settings.parse_process, settings.max_future_s)
        self.learner = Learner(settings.learn_process)

    async def start(self, producer: AIOKafkaProducer) -> None:
        """Restore the model, connect to Kafka; ``producer`` (started, owned by the caller)
        sends the dead letters."""
        model = await self.sync.load_latest()  # CheckpointMismatch stops the worker
        if model is not None:
            self.sync.seg = Segmenter(self.settings.segmenter_config(), model)
            log.info("loaded model version %d (%s, %d segments)", model.version,
                     model.algorithm, model.n_segments)
        self.sync.observe_model()
        await self.maintain(rescore=0)  # learner or not, before the first event
        self.producer = producer
        await self.validator.start()
        await self.learner.start()
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka, group_id=self.settings.group,
            enable_auto_commit=False, auto_offset_reset="earliest",
            session_timeout_ms=int(self.settings.session_timeout_s * 1000),
            heartbeat_interval_ms=max(300, int(self.settings.session_timeout_s * 1000 / 4)),
            max_poll_records=self.settings.batch_max, max_partition_fetch_bytes=4 * 1024 * 1024,
            client_id=f"segmenter-{self.settings.group}",
        )
        self.consumer.subscribe([self.settings.events_topic], listener=_Rebalance(self))
        await self.consumer.start()

    async def stop(self, timeout: float = 30.0) -> None:
        """Finish and commit the batch in flight, then leave the group and close."""
        self._stopping.set()
        if self._warming is not None:
            self._warming.cancel()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            log.warning("the batch in flight did not finish in %.0f s; it will be re-delivered",
                        timeout)
        if self.consumer is not None:
            await self.consumer.stop()
        self.validator.close()
        self.learner.close()
        await self.sync.close()

    async def run(self) -> None:
        """The consume loop; returns when :meth:`stop` is called.

        Per batch, new segments are written at once (with their change-stream entries); the
        other changed states are written once per commit interval, right before the commit
        (as Kafka Streams caches a changelog), so a busy customer costs one write per interval,
        not one per batch. Nothing is committed that Redis does not hold.
        """
        assert self.consumer is not None
        interval = self.settings.commit_interval_s
        next_flush = time.monotonic() + interval
        ahead: collections.deque[asyncio.Task[Fetched]] = collections.deque()
        try:
            while not self._stopping.is_set():
                # Read and validate the next batches while this one is applied: parsing then
                # fills the waits for Redis (and the commit) instead of adding to them, and
                # with two ahead the validation helper goes on to the second as soon as it is
                # done with the first, instead of waiting for this loop to ask.
                while len(ahead) < _AHEAD:
                    ahead.append(asyncio.create_task(self._fetch()))
                try:
                    batch, parsed = await ahead.popleft()
                except KafkaError as exc:
                    self.problem = f"Kafka: {exc}"
                    log.warning("fetch failed: %s", exc)
                    await asyncio.sleep(1)
                    continue
                if batch:
                    self._idle.clear()  # set again only when the loop has drained and exited
                    async with self._lock:
                        await self._apply_batch(batch, parsed)
                elif self.problem is not None and self.problem.startswith("Kafka"):
                    self.problem = None
                if time.monotonic() >= next_flush:
                    async with self._lock:
                        await self.flush_and_commit()
                    next_flush = time.monotonic() + interval
        finally:
            for task in ahead:  # read but not applied: re-read after the last commit
                task.cancel()
            for task in ahead:
                with contextlib.suppress(asyncio.CancelledError, KafkaError):
                    await task
            async with self._lock:
                await self.flush_and_commit()
            self._idle.set()

    async def _fetch(self) -> Fetched:
        """The next batch, read and validated; runs while earlier ones are applied."""
        assert self.consumer is not None
        # One read and validation at a time, in the order asked: batches stay in offset
        # order, and a batch goes to the helper only once it is done with the one before (a
        # send to a busy helper would block this thread until it reads).
        async with self._reading:
            fetching = time.perf_counter()
            batch = await self.consumer.getmany(timeout_ms=200,
                                                max_records=self.settings.batch_max)
            busy = time.perf_counter() - fetching
            self.metrics.busy.labels("fetch").inc(busy)
            self.last_poll = time.time()
            records = [m for msgs in batch.values() for m in msgs]
            blob = await self.validator.validate(records) if records else None
        if blob is not None:  # validated in the helper while this loop applied a batch
            started = time.perf_counter()
            parsed = self.segmenter.parse(records, decode(blob))
            self.metrics.busy.labels("parse").inc(time.perf_counter() - started)
            return batch, parsed
        parsed = []
        took = 0.0
        for i in range(0, len(records), _PARSE_STEP):
            started = time.perf_counter()
            chunk = records[i:i + _PARSE_STEP]
            parsed += self.segmenter.parse(chunk, self.validator.inline(chunk))
            took += time.perf_counter() - started
            if i + _PARSE_STEP < len(records):
                await asyncio.sleep(0)  # the batch being applied goes on as Redis answers
        self.metrics.busy.labels("parse").inc(took)
        return batch, parsed

    async def _settle(self) -> None:
        """Take a model update still out since the last batch, assign the customers who wait
        for it, and wait for the batches' Redis work: before anything else reads, writes or
        commits the segmenter's state."""
        if self.segmenter.job is not None:
            await self._apply_batch({}, [], settle=True)
        await self._written()

    async def _apply_batch(self, batch: dict[TopicPartition, list[Any]], parsed: Parsed,
                           settle: bool = False) -> None:
        started = time.perf_counter()
        assert self.producer is not None and self.consumer is not None
        owned = self.consumer.assignment()
        if any(tp not in owned for tp in batch):  # revoked while the batch waited: not ours
            batch = {tp: msgs for tp, msgs in batch.items() if tp in owned}
            parsed = [(r, e) for r, e in parsed
                      if TopicPartition(r.topic, r.partition) in owned]
            if not batch:
                return
        seg = self.segmenter
        loaded = await self._retry(functools.partial(self.store.load_states,
                                                     seg.missing(parsed)))
        t_loaded = time.perf_counter()
        now_ms = int(time.time() * 1000)
        result, waited = await self.learner.apply(seg, parsed, loaded, now_ms, settle)
        t_applied = time.perf_counter()
        self.sync.events_seen += len(result.event_ts)
        snap = self.sync.snapshot(result) if result.model_updated and seg.learner else None
        offsets = {tp: msgs[-1].offset + 1 for tp, msgs in batch.items()}
        # This batch's Redis work runs while the next batch is applied; one at a time, in
        # order (a customer's writes stay ordered), and a commit waits for it.
        await self._written()
        self._writing = asyncio.create_task(self._write_batch(
            result, snap, offsets, now_ms, seg.model.version, started))
        busy = self.metrics.busy
        busy.labels("load").inc(t_loaded - started)
        busy.labels("features").inc(t_applied - t_loaded - waited - result.learn_seconds)
        busy.labels("learn").inc(result.learn_seconds)
        busy.labels("learn_wait").inc(waited)
        busy.labels("write").inc(time.perf_counter() - t_applied)

    async def maintain(self, rescore: int) -> None:
        """Keep the shared model in sync (:class:`ModelSync`), then re-score up to ``rescore``
        customers without new events (time passed, or the model moved); writes what changed.
        Called on a timer, and once before consuming."""
        async with self._lock:
            await self._settle()
            now_ms = int(time.time() * 1000)
            for res in await self._retry(self.sync.tick):
                await self._write_rescored(res.assignments, now_ms)
            await self._write_rescored(self.segmenter.rescore(rescore), now_ms)

    def warm(self, partitions: set[int]) -> None:
        """Read the states of these (newly assigned) partitions from Redis in the background
        (:meth:`Segmenter.warm`); a rebalance restarts it."""
        if self._warming is not None:
            self._warming.cancel()
        self.segmenter.warming = bool(partitions)
        if partitions:
            self._warming = asyncio.create_task(self._warm(partitions))

    async def _warm(self, partitions: set[int]) -> None:
        seg, cursor, added, started = self.segmenter, 0, 0, time.monotonic()
        try:
            while True:
                cursor, states = await self._retry(functools.partial(
                    self.store.scan_states, cursor, partitions))
                async with self._lock:  # not while a rebalance drops partitions
                    owned = {tp.partition for tp in self.consumer.assignment()} \
                        if self.consumer is not None else set()
                    added += seg.warm([s for s in states if s.partition in owned])
                if cursor == 0 or len(seg.states) >= self.settings.state_cache:
                    break
            log.info("read %d customer states of partitions %s from Redis in %.1f s",
                     added, sorted(partitions), time.monotonic() - started)
        finally:
            if self._warming is asyncio.current_task():  # not replaced by a newer rebalance
                seg.warming = False

    def assigned(self) -> int:
        """Partitions assigned to this worker now."""
        return len(self.consumer.assignment()) if self.consumer is not None else 0

    async def refresh_sizes(self) -> dict[str, int]:
        """Read segment sizes from Redis into the gauge and the profiles."""
        sizes = await self.store.sizes()
        for sid, n in sizes.items():
            self.metrics.segment_size.labels(sid).set(n)
        return sizes
