"""Kafka helpers: topic creation, producers and dead letters (broker-measured lag: stream.lag)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from models.core import DeadLetter
from stream.credentials import kafka_options
from stream.lag import LagReader, PartitionLag, partition_owners, read_lag_once
from stream.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["LagReader", "PartitionLag", "ensure_topics", "make_producer", "partition_owners",
           "read_lag_once", "send_dead_letters"]
"""(The lag names moved to stream.lag; still importable from here.)"""


class _Quota:
    """At most ``per_window`` log lines per ``window_s``; then one summary per window, so a
    flood of bad messages does not become a flood of log lines (the metric counts them all).
    """

    def __init__(self, per_window: int = 20, window_s: float = 10.0) -> None:
        self.per_window, self.window_s = per_window, window_s
        self.start, self.used, self.skipped = 0.0, 0, 0

    def take(self, now: float) -> bool:
        if now - self.start >= self.window_s:
            if self.skipped:
                log.warning("... and %d more dead-lettered messages in the last %.0f s "
                            "(see segmenter_events_total{outcome=\"dead_lettered\"})",
                            self.skipped, now - self.start)
            self.start, self.used, self.skipped = now, 0, 0
        if self.used < self.per_window:
            self.used += 1
            return True
        self.skipped += 1
        return False


_dead_log = _Quota()


async def ensure_topics(settings: Settings, extra: tuple[str, ...] = ()) -> None:
    """Create the events, dead-letter and changes topics when missing."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka, **kafka_options(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        names = (settings.events_topic, settings.dlq_topic, settings.changes_topic,
                 settings.lifecycle_topic, settings.audience_changes_topic, *extra)
        todo = [NewTopic(n, settings.partitions, settings.replication)
                for n in dict.fromkeys(names) if n not in existing]
        if todo:
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker was first
                await admin.create_topics(todo)
            log.info("created topics %s", [t.name for t in todo])
    finally:
        await admin.close()


def make_producer(settings: Settings) -> AIOKafkaProducer:
    """A producer that batches (linger) and waits for the broker's ack."""
    return AIOKafkaProducer(bootstrap_servers=settings.kafka, linger_ms=5, acks="all",
                            max_batch_size=256 * 1024, max_request_size=2 * 1024 * 1024,
                            **kafka_options(settings))


async def send_dead_letters(
    producer: AIOKafkaProducer, topic: str, dead: list[DeadLetter]
) -> None:
    """Send each invalid record to the DLQ: original key and bytes, origin and reason in
    headers (the convention of Kafka Connect's dead-letter queues)."""
    futures = []
    now = time.monotonic()
    for d in dead:
        r = d.record
        if _dead_log.take(now):
            log.warning("dead-lettered %s[%d]@%d: %s", r.topic, r.partition, r.offset,
                        d.reason)
        headers = [
            ("segmenter.error.reason", d.reason.encode()),
            ("segmenter.source.topic", r.topic.encode()),
            ("segmenter.source.partition", str(r.partition).encode()),
            ("segmenter.source.offset", str(r.offset).encode()),
        ]
        if d.detail:
            headers.append(("segmenter.error.detail", d.detail.encode()))
        futures.append(await producer.send(topic, key=r.key, value=r.value or b"",
                                           headers=headers))
    if futures:
        await asyncio.gather(*futures)
