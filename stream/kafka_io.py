"""Kafka helpers: topic creation, producers, dead letters and broker-measured lag."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from models.core import DeadLetter
from stream.settings import Settings

log = logging.getLogger(__name__)


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
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        names = (settings.events_topic, settings.dlq_topic, settings.changes_topic,
                 settings.lifecycle_topic, *extra)
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
                            max_batch_size=256 * 1024, max_request_size=2 * 1024 * 1024)


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


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """Lag of one partition, read from the broker."""

    topic: str
    """Topic."""
    partition: int
    """Partition."""
    committed: int | None
    """The group's committed offset (None: nothing committed yet)."""
    end: int
    """End offset (high watermark)."""
    oldest_unprocessed_ms: int | None = None
    """Timestamp of the first record after the committed offset (None when caught up)."""

    @property
    def lag(self) -> int:
        """End minus committed (everything, when nothing is committed)."""
        return max(0, self.end - (self.committed or 0))

    def seconds_behind(self, now_ms: int) -> float:
        """Age of the oldest unprocessed record (0 when caught up)."""
        if not self.lag or self.oldest_unprocessed_ms is None:
            return 0.0
        return max(0.0, (now_ms - self.oldest_unprocessed_ms) / 1000)


class _QuietLagReads(logging.Filter):
    """Drops aiokafka's INFO lines about (re-)assigning partitions and finding the group
    coordinator: the lag reader re-assigns on every read (every few seconds), which would
    fill worker logs with tables of topic names."""

    PREFIXES = ("Updating subscribed topics", "Subscribed to topic", "Discovered coordinator")

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno <= logging.INFO
                    and str(record.msg).startswith(self.PREFIXES))


_QUIET = _QuietLagReads()


class LagReader:
    """Reads committed and end offsets from the broker, independently of any consumer.

    End offsets come from ListOffsets and, because some Kafka-compatible brokers answer it
    with the last batch's base offset + 1, from the high watermark of a real Fetch; the larger
    wins. The Fetch starts at the committed offset, so it also returns the oldest unprocessed
    record, whose timestamp tells how far behind the group is in time.
    """

    def __init__(self, bootstrap: str, group: str, topic: str) -> None:
        self.bootstrap, self.group, self.topic = bootstrap, group, topic

    async def start(self) -> None:
        """Connect."""
        # The group id only serves OffsetFetch: with manual assignment this consumer never
        # joins the group and never commits. (The admin client's OffsetFetch is not used:
        # some Kafka-compatible brokers answer it in a form aiokafka cannot decode.)
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=self.group, enable_auto_commit=False,
            max_partition_fetch_bytes=64 * 1024, fetch_max_wait_ms=50,
        )
        try:
            await self._consumer.start()
        except BaseException:  # cut short (Ctrl-C in the demo, broker gone): leave none open
            await self._consumer.stop()
            raise
        for name in ("aiokafka.consumer.subscription_state", "aiokafka.consumer.group_coordinator"):
            logging.getLogger(name).addFilter(_QUIET)

    async def close(self) -> None:
        """Disconnect."""
        await self._consumer.stop()

    async def read(self, timeout: float = 3.0) -> list[PartitionLag]:
        """Lag per partition of the topic."""
        await self._consumer.topics()  # refresh metadata
        parts = self._consumer.partitions_for_topic(self.topic) or set()
        tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        if not tps:
            return []
        self._consumer.assign(tps)
        # Paused except while reading: records fetched ahead and then dropped by the next
        # seek would be garbage in reference cycles (aiokafka's PartitionRecords), each with
        # its fetch buffer, freed only by a full collection (seen as a slowly rising RSS).
        self._consumer.pause(*tps)
        committed = {}
        for tp in tps:
            offset = await self._consumer.committed(tp)
            if offset is not None and offset >= 0:
                committed[tp] = offset
        listed = await self._consumer.end_offsets(tps)
        starts = await self._consumer.beginning_offsets(tps)
        for tp in tps:
            self._consumer.seek(tp, max(committed.get(tp, 0), starts[tp]))
        self._consumer.resume(*tps)
        seen: dict[TopicPartition, int] = {}
        oldest: dict[TopicPartition, int] = {}
        done: set[TopicPartition] = set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(done) < len(tps) and loop.time() < deadline:
            batch = await self._consumer.getmany(timeout_ms=100, max_records=len(tps) * 50)
            for tp, msgs in batch.items():
                if msgs and tp not in oldest:
                    oldest[tp] = msgs[0].timestamp
            for tp in tps:
                hw = self._consumer.highwater(tp)
                if tp in done or hw is None:
                    continue
                seen[tp] = hw
                # done with a partition once it has an end offset and, if it lags, the
                # timestamp of its oldest unprocessed record
                if tp in oldest or hw <= committed.get(tp, 0):
                    done.add(tp)
                    self._consumer.pause(tp)
            if all(tp in done or (tp not in seen and listed[tp] <= committed.get(tp, 0))
                   for tp in tps):
                break  # nothing left to fetch where no answer came
        self._consumer.pause(*tps)
        return [PartitionLag(self.topic, tp.partition, committed.get(tp),
                             max(listed[tp], seen.get(tp, 0)), oldest.get(tp)) for tp in tps]


async def partition_owners(bootstrap: str, group: str, topic: str) -> dict[int, str]:
    """Which member of the group holds each partition (empty when the broker does not say)."""
    from aiokafka.protocol.group import MemberAssignment

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    owners: dict[int, str] = {}
    try:
        described = await admin.describe_consumer_groups([group])
        for g in described:
            for member in g.groups[0][5] if g.groups else []:
                member_id, client_id, host, _, raw = member
                if not raw:
                    continue
                assignment = MemberAssignment.decode(raw)
                for t, parts in assignment.assignment:
                    if t == topic:
                        for p in parts:
                            owners[p] = f"{client_id or member_id}@{host}".strip("@")
    except Exception as exc:  # optional detail: never fail the lag report for it
        log.debug("could not describe group %s: %s", group, exc)
    finally:
        await admin.close()
    return owners


async def read_lag_once(bootstrap: str, group: str, topic: str) -> list[PartitionLag]:
    """Open a :class:`LagReader`, read once, close."""
    reader = LagReader(bootstrap, group, topic)
    await reader.start()
    try:
        return await reader.read()
    finally:
        await reader.close()
