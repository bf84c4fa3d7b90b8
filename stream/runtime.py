"""Everything one worker holds, built from the settings, and what it tells the outside.

:class:`Runtime` creates the clients and components and starts and stops them in order;
:meth:`Runtime.status` is the one read-only view that HTTP routes and the dashboard use
(:class:`stream.status.WorkerStatus`), so they never reach into the components.
"""

from __future__ import annotations

import logging
import time

from aiokafka import AIOKafkaProducer

from stream.audiences_io import AudienceStore
from stream.credentials import kafka_options, redis_options
from stream.dashboard import Dashboard
from stream.health import Health
from stream.kafka_io import LagReader, ensure_topics, make_producer
from stream.metrics import Metrics
from stream.pipeline import EventPipeline
from stream.redis_io import RedisStore, connect
from stream.relay import ChangeRelay, ShardedRelay
from stream.settings import Settings
from stream.status import WorkerStatus

log = logging.getLogger(__name__)


class Runtime:
    """Clients and components of one worker; clients bind to the running loop, so
    :meth:`start` makes them inside it (routes answer 503 until then)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.health = Health()
        self.redis = connect(settings.redis_url, cluster=settings.redis_cluster,
                             **redis_options(settings))
        self.store = RedisStore(self.redis, settings.redis_prefix, settings.stream_maxlen,
                                remember=settings.state_cache)
        self.audiences = AudienceStore(self.redis, self.store.keys)
        self.pipeline = EventPipeline(settings, self.store, self.metrics, self.health,
                                      self.audiences)
        self.lag_reader = LagReader(settings.kafka, settings.group, settings.events_topic,
                                    kafka_options(settings))
        self.producer: AIOKafkaProducer
        self.relays: list[ChangeRelay | ShardedRelay] = []
        self.dashboard = Dashboard()
        self.pipeline.freshness_sink = self.dashboard.freshness
        self.started = False
        self.started_at = 0.0

    async def start(self) -> None:
        """Topics, producer, pipeline, lag reader, relays."""
        await ensure_topics(self.settings)
        if self.store.shards is not None:  # what a crashed writer left in the outboxes
            swept = await self.store.shards.sweep()
            if swept:
                log.info("applied %d outbox entries left by an earlier writer", swept)
        if self.settings.audiences_file:  # InvalidAudience stops the worker, naming it
            loaded = await self.audiences.load_file(self.settings.audiences_file)
            log.info("audiences loaded from %s: %s", self.settings.audiences_file, loaded)
        self.producer = make_producer(self.settings)
        await self.producer.start()
        await self.pipeline.start(self.producer)
        await self.lag_reader.start()
        keys, s = self.store.keys, self.settings
        self.relays = [
            ShardedRelay(self.redis, self.producer, keys, "changes", keys.changes,
                         s.changes_topic),
            ShardedRelay(self.redis, self.producer, keys, "audience-changes",
                         keys.audience_changes, s.audience_changes_topic),
        ] if keys.cluster else [
            ChangeRelay(self.redis, self.producer, keys.changes, s.changes_topic,
                        keys.relay_lease(keys.changes)),
            ChangeRelay(self.redis, self.producer, keys.audience_changes,
                        s.audience_changes_topic, keys.relay_lease(keys.audience_changes)),
        ]
        self.relays.append(ChangeRelay(
            self.redis, self.producer, keys.lifecycle, s.lifecycle_topic,
            keys.relay_lease(keys.lifecycle), key_field="segment", field=b"lifecycle"))
        self.started_at = time.time()
        self.started = True

    async def stop(self) -> None:
        """Drain and close, in reverse order."""
        for relay in self.relays:
            relay.stop()
        await self.pipeline.stop()
        if self.started:
            await self.lag_reader.close()
            await self.producer.stop()
        await self.redis.aclose()

    @property
    def stopping(self) -> bool:
        """The worker is shutting down."""
        return self.pipeline.stopping.is_set()

    def problems(self) -> list[str]:
        """Why this worker is not healthy (empty when it is)."""
        p = self.pipeline
        if not self.started:
            return ["starting"]
        out = []
        now = time.time()
        last_poll = p.reader.last_poll if p.reader is not None else 0.0
        if now - last_poll > 15:
            out.append("not consuming: no poll for 15 s")
        if p.assigned() == 0 and now - self.started_at > 3 * self.settings.session_timeout_s:
            out.append("no partitions assigned (more workers than partitions, or no group)")
        w = p.writer
        if w is not None and w.uncommitted_since and now - w.uncommitted_since > max(
                30.0, 10 * self.settings.commit_interval_s) and now - w.last_commit > 30:
            out.append("commits stalled: nothing committed for 30 s while events wait")
        return out + self.health.reasons()

    def status(self) -> WorkerStatus:
        """A read-only snapshot for HTTP routes and the dashboard."""
        core = self.pipeline.core
        model = core.model
        return WorkerStatus(
            started=self.started, problems=self.problems(),
            processed=self.pipeline.processed, dead_lettered=self.pipeline.dead_lettered,
            model_version=model.version, algorithm=model.algorithm,
            segments=model.n_segments, criterion=dict(model.criterion),
            trains=core.schedule.trains, drift_detections=core.drift.detections,
            relay_leader=bool(self.relays and self.relays[0].leader), waiting=core.waiting())
