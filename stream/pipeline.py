"""The hot path: a batched consumer of the events topic, run as a task of the Faust app.

Per batch, in order: read and validate (:mod:`stream.consume`) -> load missing customer
states from Redis -> features, assignment and model updates (the pure core,
:class:`models.core.Segmenter`, with updates in a helper: :mod:`stream.updates`) -> write
dead letters, the model snapshot and new segments (:mod:`stream.writes`) -> commit. Nothing
is committed before Redis has it, so a crash re-delivers, and re-delivered events are
dropped by offset and event id. Change messages are relayed to Kafka by :mod:`stream.relay`.

:class:`EventPipeline` owns the core and composes one object per job around it; the model
shared by all workers is kept in step by :class:`stream.modelsync.ModelSync`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from models.config import BatchResult
from models.core import Parsed, Segmenter
from stream.audience_pass import AudiencePass
from stream.audiences_io import AudienceStore
from stream.consume import BatchReader, Fetched
from stream.credentials import kafka_options
from stream.health import Health
from stream.metrics import Metrics
from stream.modelsync import ModelSync, Snapshot
from stream.parsing import Validator
from stream.redis_io import RedisStore
from stream.rfm_io import RfmRefresher
from stream.settings import Settings
from stream.slices import drain_states, full_writes
from stream.updates import ModelUpdates
from stream.warm import Warmer
from stream.writes import BatchWriter

log = logging.getLogger(__name__)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, pipeline: EventPipeline) -> None:
        self.pipeline = pipeline

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        # Hand over cleanly: everything applied is written and committed before the new
        # owner starts; then forget our copies, which another worker may change from now on.
        async with self.pipeline.lock:
            await self.pipeline.flush_and_commit()
            self.pipeline.core.forget_partitions({tp.partition for tp in revoked})
            self.pipeline.revoked |= revoked
        log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("partitions assigned: %s", sorted(tp.partition for tp in assigned))
        self.pipeline.revoked.clear()  # the new assignment is what the consumer lists now
        self.pipeline.warmer.start({tp.partition for tp in assigned})
        # those not evaluated with the current definitions yet (a worker stopped mid-pass)
        self.pipeline.audience_pass.start(self.pipeline.audiences_version)


class EventPipeline:
    """Consumes the events topic in batches and keeps segments in Redis current."""

    def __init__(self, settings: Settings, store: RedisStore, metrics: Metrics,
                 health: Health, audiences: AudienceStore) -> None:
        self.settings, self.store, self.metrics, self.health = settings, store, metrics, health
        self.audiences = audiences
        self.audiences_version = 0  # of the definitions the core evaluates with
        self.worker_id = f"{socket.gethostname()}:{settings.web_port}:{os.getpid()}"
        self.core = Segmenter(settings.segmenter_config())
        self.sync = ModelSync(store, metrics, settings.segmenter_config().refresh_sample)
        self.rfm = RfmRefresher(store.r, store.keys)
        self.updates = ModelUpdates(settings.learn_process)
        self.validator = Validator(settings.parse_process, settings.max_future_s)
        self.lock = asyncio.Lock()  # one of: a batch, a commit, a model sync, a rebalance
        self.processed = 0
        self.dead_lettered = 0
        self.freshness_sink: Any = None  # a deque that receives recent freshness samples
        self.consumer: AIOKafkaConsumer | None = None
        self.reader: BatchReader | None = None
        self.writer: BatchWriter | None = None
        self.warmer = Warmer(store, self.core, self.lock, self._owned, settings.state_cache,
                             health, metrics.redis_errors)
        self.audience_pass = AudiencePass(store, self.core, self.lock, self._owned, self.settle,
                                          settings.rescore_per_s, health, metrics.redis_errors)
        self.stopping = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._drifts = 0
        self.revoked: set[TopicPartition] = set()
        """Handed over in a rebalance not finished yet: the consumer lists them as assigned
        until the new assignment arrives, but a batch fetched before must not apply them."""

    async def start(self, producer: AIOKafkaProducer) -> None:
        """Restore the model, connect to Kafka; ``producer`` (started, owned by the caller)
        sends the dead letters."""
        model = await self.sync.load_latest()  # CheckpointMismatch stops the worker
        if model is not None:
            self.core.adopt(model)
            log.info("loaded model version %d (%s, %d segments)", model.version,
                     model.algorithm, model.n_segments)
        self.sync.observe_model(self.core)
        await self.validator.start()
        await self.updates.start()
        s = self.settings
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka, group_id=s.group, **kafka_options(s),
            enable_auto_commit=False, auto_offset_reset="earliest",
            session_timeout_ms=int(s.session_timeout_s * 1000),
            heartbeat_interval_ms=max(300, int(s.session_timeout_s * 1000 / 4)),
            max_poll_records=s.batch_max, max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_wait_ms=s.fetch_wait_ms, fetch_min_bytes=1,  # latency: settings.py
            client_id=f"segmenter-{s.group}")
        self.reader = BatchReader(self.consumer, self.validator, self.metrics, s.batch_max,
                                  live_max=s.live_batch_max)
        self.writer = BatchWriter(self.store, self.sync, self.metrics, self.health,
                                  self.consumer, producer, s.dlq_topic,
                                  (s.events_topic, s.max_anonymous_ids))
        self.writer.freshness_sink = self.freshness_sink
        await self.maintain(rescore=0)  # trainer or not, before the first event
        self.consumer.subscribe([s.events_topic], listener=_Rebalance(self))
        await self.consumer.start()

    async def stop(self, timeout: float = 30.0) -> None:
        """Finish and commit the batch in flight, then leave the group and close."""
        self.stopping.set()
        self.warmer.cancel()
        self.audience_pass.cancel()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            log.warning("the batch in flight did not finish in %.0f s; it will be re-delivered",
                        timeout)
        if self.consumer is not None:
            await self.consumer.stop()
        self.validator.close()
        self.updates.close()
        await self.sync.close()

    async def run(self) -> None:
        """The consume loop; returns when :meth:`stop` is called.

        Per batch, new segments are written at once (with their change-stream entries); the
        other changed states are written once per commit interval, right before the commit
        (as Kafka Streams caches a changelog), so a busy customer costs one write per interval,
        not one per batch (``commit_interval_behind_s`` while behind); caught up, in slices
        between batches (RFM names after the last, then the commit). Redis holds what commits."""
        assert self.reader is not None
        interval, behind = self.settings.commit_interval_s, self.settings.commit_interval_behind_s
        last_flush = time.monotonic()
        try:
            while not self.stopping.is_set():
                try:
                    batch, parsed = await self._next_batch()
                except KafkaError as exc:
                    self.health.report("kafka", f"Kafka: {exc}")
                    log.warning("fetch failed: %s", exc)
                    await asyncio.sleep(1)
                    continue
                self.health.clear("kafka")
                if batch:
                    self._idle.clear()  # set again only when the loop has drained and exited
                    async with self.lock:
                        await self._apply_batch(batch, parsed)
                assert self.writer is not None
                size = 0 if self.reader.behind else self.settings.flush_slice
                if self.writer.flushing:
                    async with self.lock:
                        await self.writer.flush_step(size)
                elif time.monotonic() - last_flush >= (behind if self.reader.behind else interval):
                    last_flush = time.monotonic()
                    async with self.lock:
                        await self.settle()
                        drained, again = drain_states(self.core)
                        await self.writer.begin_flush(
                            drained, self.core.cache.states,
                            functools.partial(full_writes, self.core, again=again),
                            functools.partial(self.rfm.tick, self.core), size)
        finally:
            await self.reader.close()
            async with self.lock:
                await self.flush_and_commit()
            self._idle.set()

    async def _next_batch(self) -> Fetched:
        """The next batch. When caught up, customers waiting for a model update still
        running are assigned and written as soon as it ends, not with the next events
        (which may be long in coming)."""
        assert self.reader is not None
        running = None if self.reader.behind else self.updates.pending()
        if running is None or running.done():
            return await self.reader.next()
        fetching = asyncio.ensure_future(self.reader.next())
        try:
            either: set[asyncio.Future[Any]] = {fetching, running}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if not fetching.done():
                async with self.lock:
                    await self.settle()
            return await fetching
        finally:
            fetching.cancel()  # only when cut short (stopping): re-read after the commit

    async def _apply_batch(self, batch: dict[TopicPartition, list[Any]], parsed: Parsed) -> None:
        started = time.perf_counter()
        assert self.consumer is not None and self.writer is not None
        owned = self.consumer.assignment() - self.revoked
        if any(tp not in owned for tp in batch):  # revoked while the batch waited: not ours
            batch = {tp: msgs for tp, msgs in batch.items() if tp in owned}
            parsed = [(r, e) for r, e in parsed
                      if TopicPartition(r.topic, r.partition) in owned]
            if not batch:
                return
        core = self.core
        loaded = await self.writer.load(core, parsed)  # (and link records: identity stitching)
        t_loaded = time.perf_counter()
        now_ms = int(time.time() * 1000)
        result, waited = await self.updates.apply(core, parsed, loaded)
        t_applied = time.perf_counter()
        self.sync.events_seen += len(result.event_ts)
        snap = self._snapshot(result)
        offsets = {tp: msgs[-1].offset + 1 for tp, msgs in batch.items()}
        # This batch's Redis work runs while the next batch is applied; one at a time, in
        # order (a customer's writes stay ordered), and a commit waits for it.
        await self.writer.write_batch(result, snap, offsets, now_ms, core.model.version,
                                      started)
        self._observe(len(result.dead), sum(result.counts.values()))
        busy = self.metrics.busy
        busy.labels("load").inc(t_loaded - started)
        busy.labels("features").inc(t_applied - t_loaded - waited - result.learn_seconds)
        busy.labels("learn").inc(result.learn_seconds)
        busy.labels("learn_wait").inc(waited)
        busy.labels("write").inc(time.perf_counter() - t_applied)

    def _observe(self, dead: int, processed: int) -> None:
        self.dead_lettered += dead
        self.processed += processed
        drift = self.core.drift
        if drift.detections > self._drifts:
            self.metrics.drift.inc(drift.detections - self._drifts)
            self._drifts = drift.detections
            log.warning("drift: customers moved away from the segment centres (ADWIN); "
                        "refreshing the model and re-scoring")
        self.metrics.distance.set(drift.mean_distance)

    def _snapshot(self, result: BatchResult) -> Snapshot | None:
        """The model to publish after ``result``, taken now: only the trainer publishes."""
        if result.model_updated and self.core.schedule.trains:
            return self.sync.snapshot(self.core.model, result)
        return None

    async def settle(self) -> None:
        """Take a model update still running, assign the customers who wait for it, and wait
        for the batches' Redis work: before anything else reads, writes or commits the core's
        state. Call under :attr:`lock`."""
        assert self.writer is not None
        if self.updates.out:
            result, _ = await self.updates.apply(self.core, [], {}, settle=True)
            snap = self._snapshot(result)
            await self.writer.write_batch(result, snap, {}, int(time.time() * 1000),
                                          self.core.model.version, time.perf_counter())
        await self.writer.written()

    async def flush_and_commit(self) -> None:
        """Write every changed state, then commit what was applied. Call under :attr:`lock`."""
        if self.writer is None:
            return
        await self.settle()
        await self.writer.flush_and_commit(self.core.drain(),
                                           functools.partial(self.rfm.tick, self.core))

    async def maintain(self, rescore: int) -> None:
        """Keep the shared model and audiences in sync, then re-score up to ``rescore``
        customers without new events (time passed, or the model moved); writes what changed.
        Called on a timer, and once before consuming; never during a flush in slices (its
        drained states would overwrite customers re-scored now); re-scoring in slices too."""
        assert self.writer is not None
        version = await self.writer.retry(self.audiences.version)
        await self.writer.between_flushes(self.lock)
        try:
            await self.settle()
            if version != self.audiences_version:
                # new definitions apply to what follows; a write of older ones is refused
                # by the write script's version check, so re-read under the lock
                version, defs = await self.writer.retry(self.audiences.load)
                self.core.assigner.set_audiences(version, defs)
                self.audiences_version = version
                log.info("audiences: version %d, %d defined", version, len(defs))
            self.audience_pass.ensure(version, self.core.watermark)  # every stored customer
            now_ms = int(time.time() * 1000)
            for res in await self.writer.retry(functools.partial(self.sync.tick, self.core)):
                await self.writer.write_rescored(res.assignments, now_ms)
            # event time moved cached memberships; not during a pass (reason "definition")
            timed = 0 if self.audience_pass.running else rescore
            await self.writer.write_rescored(self.core.assigner.audience_moves(
                self.core.model, timed), now_ms, rescored=False)
        finally:
            self.lock.release()
        slices = 0 if self.reader is None or self.reader.behind else self.settings.flush_slice
        await self.writer.rescore(self.lock, self.settle, self.core.rescore, rescore, slices)
        progress = self.audience_pass.progress()
        if progress is not None:
            await self.writer.retry(functools.partial(
                self.audiences.report_progress, self.worker_id, *progress))

    def _owned(self) -> set[int]:
        return {tp.partition for tp in self.consumer.assignment() - self.revoked} \
            if self.consumer is not None else set()

    def assigned(self) -> int:
        """Partitions assigned to this worker now."""
        return len(self.consumer.assignment()) if self.consumer is not None else 0
