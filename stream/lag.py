"""Consumer lag read from the broker: committed offsets, end offsets, the oldest unprocessed
record's age and the owning consumer (``segmenter lag``, the lag metrics, replay's wait).

On Apache Kafka (and any broker but the embedded one) these come from the standard APIs, as
``kafka-consumer-groups --describe`` reads them: OffsetFetch through the admin client for the
committed offsets, ListOffsets(latest) for the end offsets, DescribeGroups for the owners.
The embedded broker (Tansu) answers ListOffsets(latest) with the last record batch's base
offset + 1 and sends an OffsetFetch response aiokafka's admin client cannot decode, so there
(only) committed offsets come from a consumer and end offsets also from a real Fetch's high
watermark (the larger wins).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

log = logging.getLogger(__name__)
T = TypeVar("T")

EMBEDDED_CLUSTER_ID = "tansu_cluster"
"""The cluster id the embedded broker reports (Tansu's default, which ``segmenter demo`` and
the tests keep): the lag reader's workarounds apply to this broker only."""


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

    def seconds_behind(self, now_ms: int) -> float | None:
        """Age of the oldest unprocessed record: 0 when caught up, None (unknown) when the
        group lags but that record's timestamp was not read (its fetch timed out on a busy
        worker): never 0 while events wait."""
        if not self.lag:
            return 0.0
        if self.oldest_unprocessed_ms is None:
            return None
        return max(0.0, (now_ms - self.oldest_unprocessed_ms) / 1000)


def most_behind(rows: list[PartitionLag], now_ms: int) -> float | None:
    """The largest :meth:`PartitionLag.seconds_behind` of ``rows`` known; None when the group
    lags and no lagging partition's age is known (0 only when caught up).

    >>> rows = [PartitionLag("e", 0, 5, 9, 1_000), PartitionLag("e", 1, 5, 9, None)]
    >>> most_behind(rows, 41_000), most_behind(rows[1:], 41_000), most_behind([], 0)
    (40.0, None, 0.0)
    """
    known = [s for s in (r.seconds_behind(now_ms) for r in rows) if s is not None]
    if known:
        return max(known)
    return None if any(r.lag for r in rows) else 0.0


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

    Standard brokers: committed offsets by OffsetFetch (admin client), end offsets by
    ListOffsets. The embedded broker: see the module's docstring. Either way a Fetch from the
    committed offset of each lagging partition returns the oldest unprocessed record, whose
    timestamp tells how far behind the group is in time.
    """

    def __init__(self, bootstrap: str, group: str, topic: str,
                 options: Mapping[str, Any] | None = None) -> None:
        self.bootstrap, self.group, self.topic = bootstrap, group, topic
        self.options = dict(options or {})
        """Security keyword arguments of its clients (``stream.credentials.kafka_options``)."""
        self.standard = True
        """False on the embedded broker (set by :meth:`start`)."""
        self.offline: list[str] = []
        """Partitions without a leader at the last read (nothing moves there), for people."""
        self.degraded: list[str] = []
        """Under-replicated partitions at the last read (they work, with less margin)."""
        self._oldest: dict[TopicPartition, tuple[int, int]] = {}
        """Per lagging partition, the committed offset and oldest unprocessed record's
        timestamp last read: stands in when a read gets no record in time."""

    async def start(self) -> None:
        """Connect, and tell the embedded broker from standard ones."""
        # The group id only serves the embedded broker's OffsetFetch: with manual assignment
        # this consumer never joins the group and never commits.
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=self.group, enable_auto_commit=False,
            max_partition_fetch_bytes=64 * 1024, fetch_max_wait_ms=50, **self.options,
        )
        self._admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, **self.options)
        try:
            await self._consumer.start()
            await self._admin.start()
            cluster = await _retrying(self._admin.describe_cluster)
            self.standard = cluster.get("cluster_id") != EMBEDDED_CLUSTER_ID
        except BaseException:  # cut short (Ctrl-C in the demo, broker gone): leave none open
            await self.close()
            raise
        for name in ("aiokafka.consumer.subscription_state", "aiokafka.consumer.group_coordinator"):
            logging.getLogger(name).addFilter(_QUIET)

    async def close(self) -> None:
        """Disconnect."""
        try:
            await self._consumer.stop()
        finally:
            await self._admin.close()

    async def _committed(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        if self.standard:
            offsets = await _retrying(lambda: self._admin.list_consumer_group_offsets(
                self.group, partitions=tps), 3.0)
            return {tp: o.offset for tp, o in offsets.items() if o.offset >= 0 and tp in tps}
        committed = {}
        for tp in tps:
            offset = await self._consumer.committed(tp)
            if offset is not None and offset >= 0:
                committed[tp] = offset
        return committed

    async def read(self, timeout: float = 3.0) -> list[PartitionLag]:
        """Lag per partition of the topic."""
        # Metadata for this topic by name: a consumer's own metadata lists only the topics it
        # tracks (the embedded broker answers every topic to an empty list; Apache Kafka none)
        # retried: the admin client asks a random broker, maybe one just gone
        described = await _retrying(lambda: self._admin.describe_topics([self.topic]), 3.0)
        found = [p for t in described if t["topic"] == self.topic and not t["error_code"]
                 for p in t["partitions"]]
        self.offline, self.degraded = replication_issues(self.topic, found)
        tps = [TopicPartition(self.topic, p["partition"]) for p in
               sorted(found, key=lambda p: int(p["partition"]))]
        if not tps:
            return []
        self._consumer.assign(tps)
        # Paused except while reading: records fetched ahead and then dropped by the next
        # seek would be garbage in reference cycles (aiokafka's PartitionRecords), each with
        # its fetch buffer, freed only by a full collection (seen as a slowly rising RSS).
        self._consumer.pause(*tps)
        committed = await self._committed(tps)
        listed = await self._consumer.end_offsets(tps)
        # Standard brokers: fetch only where the group lags (for the oldest record's time);
        # the embedded one: everywhere, since only the Fetch tells its true end offset.
        fetch = [tp for tp in tps if listed[tp] > committed.get(tp, 0) or not self.standard]
        seen, oldest = await self._fetch_first(fetch, committed, listed, timeout)
        for tp in tps:
            at = committed.get(tp, 0)
            if tp in oldest:
                self._oldest[tp] = (at, oldest[tp])
            elif max(listed[tp], seen.get(tp, 0)) <= at:
                self._oldest.pop(tp, None)  # caught up
            elif tp in self._oldest and self._oldest[tp][0] <= at:
                # no record in time (a busy worker): the last one read is at most as new as
                # the true oldest, so the age shown is the last known, an upper bound
                oldest[tp] = self._oldest[tp][1]
        return [PartitionLag(self.topic, tp.partition, committed.get(tp),
                             max(listed[tp], seen.get(tp, 0)), oldest.get(tp)) for tp in tps]

    async def _fetch_first(
        self, tps: list[TopicPartition], committed: dict[TopicPartition, int],
        listed: dict[TopicPartition, int], timeout: float,
    ) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
        """Fetch from each partition's committed offset: the high watermarks seen and the
        timestamp of each lagging partition's first record."""
        seen: dict[TopicPartition, int] = {}
        oldest: dict[TopicPartition, int] = {}
        if not tps:
            return seen, oldest
        starts = await self._consumer.beginning_offsets(tps)
        for tp in tps:
            self._consumer.seek(tp, max(committed.get(tp, 0), starts[tp]))
        self._consumer.resume(*tps)
        done: set[TopicPartition] = set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(done) < len(tps) and loop.time() < deadline:
            batch = await self._consumer.getmany(*tps, timeout_ms=100,
                                                 max_records=len(tps) * 50)
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
        return seen, oldest


def replication_issues(topic: str, parts: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Partitions of ``topic`` without a leader, and under-replicated ones (fewer replicas
    in sync than assigned), as sentences for ``/health``, from a metadata answer.

    >>> replication_issues("events", [
    ...     {"partition": 0, "leader": 1, "replicas": [1, 2, 3], "isr": [1, 3]},
    ...     {"partition": 1, "leader": 3, "replicas": [3, 2, 1], "isr": [3, 1]},
    ...     {"partition": 2, "leader": 1, "replicas": [1, 3, 2], "isr": [1, 3, 2]}])
    ([], ['Kafka: 2 of 3 events partitions under-replicated (broker 2 out of sync)'])
    >>> replication_issues("events", [{"partition": 0, "leader": -1, "replicas": [2],
    ...                                "isr": [2]}])
    (['Kafka: events partition 0 has no leader (replicas on broker 2)'], [])
    """
    offline = [p for p in parts if p["leader"] < 0]
    under = [p for p in parts if p["leader"] >= 0 and len(p["isr"]) < len(p["replicas"])]

    def brokers(ids: set[int]) -> str:
        return ("broker " if len(ids) == 1 else "brokers ") + ", ".join(map(str, sorted(ids)))
    down = [f"Kafka: {topic} partition{'s' if len(offline) > 1 else ''} "
            f"{', '.join(str(p['partition']) for p in offline)} "
            f"{'have' if len(offline) > 1 else 'has'} no leader (replicas on "
            f"{brokers({b for p in offline for b in p['replicas']})})"] if offline else []
    late = {b for p in under for b in p["replicas"] if b not in p["isr"]}
    less = [f"Kafka: {len(under)} of {len(parts)} {topic} partitions under-replicated "
            f"({brokers(late)} out of sync)"] if under else []
    return down, less


async def _retrying(call: Callable[[], Awaitable[T]], timeout: float = 10.0) -> T:
    """``call()``, again after a retriable error (no coordinator yet: Apache Kafka creates
    ``__consumer_offsets`` on a group's first lookup; a coordinator moving; a broker gone)
    until ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return await call()
        except KafkaError as exc:
            if not exc.retriable or loop.time() >= deadline:
                raise
        await asyncio.sleep(0.2)


async def partition_owners(bootstrap: str, group: str, topic: str,
                           options: Mapping[str, Any] | None = None) -> dict[int, str]:
    """Which member of the group holds each partition (empty when the broker does not say);
    ``options`` as :class:`LagReader`'s."""
    from aiokafka.protocol.group import MemberAssignment

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **(options or {}))
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


async def read_lag_once(bootstrap: str, group: str, topic: str,
                        options: Mapping[str, Any] | None = None) -> list[PartitionLag]:
    """Open a :class:`LagReader`, read once, close."""
    reader = LagReader(bootstrap, group, topic, options)
    await reader.start()
    try:
        return await reader.read()
    finally:
        await reader.close()
