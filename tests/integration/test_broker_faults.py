"""Broker faults on a three-node Apache Kafka cluster (replication factor 3,
``min.insync.replicas=2``), for real, while known events are still arriving: ``kill -9`` of
the broker leading most event partitions, then its restart; a rolling restart of all three.
As in test_faults.py, the final Redis state must equal an uninterrupted run's (nothing lost,
nothing counted twice, every change chain complete), and the changes topic must hold every
change in the Redis outbox, in order per partition, duplicated only as the relay documents
(a re-send after a failed ack, the same ``segmenter.change_id``).

Needs Apache Kafka (``SEGMENTER_TEST_BROKER=apache``; Java 17 and Maven): the embedded broker
is a single process without replication, so these tests skip on it, saying so.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from stream.embedded import start_redis
from stream.settings import Settings
from tests.conftest import broker_kind, make_settings
from tests.integration.apache_kafka import KafkaCluster, KafkaNode
from tests.integration.helpers import TopicReader, produce, wait_for
from tests.integration.test_faults import (
    Stream,
    assert_same,
    caught_up,
    committed,
    final_state,
    make_stream,
    reference,
    start_run,
)

pytestmark = pytest.mark.skipif(
    broker_kind() != "apache",
    reason="broker faults need a three-node Apache Kafka cluster with replication "
           "(SEGMENTER_TEST_BROKER=apache; Java 17 and Maven); the embedded broker is one "
           "process without replicas")


@pytest.fixture(scope="module")
def cluster() -> Iterator[KafkaCluster]:
    nodes = KafkaCluster(3)
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture(scope="module")
def servers(cluster: KafkaCluster) -> Iterator[tuple[str, str]]:
    """This module's servers: the three-node cluster and a Redis of its own."""
    valkey = start_redis()
    try:
        yield cluster.bootstrap, valkey.url
    finally:
        valkey.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stream(servers: tuple[str, str]) -> AsyncIterator[Stream]:
    yield make_stream(dataclasses.replace(make_settings(servers), replication=3))


@pytest.fixture
async def r(stream: Stream) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(stream.settings.redis_url)
    yield client
    await client.aclose()


async def partitions(cluster: KafkaCluster, topic: str) -> list[dict[str, Any]]:
    """The topic's partitions as the cluster describes them (leader, replicas, isr)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=cluster.live_bootstrap)
    await admin.start()
    try:
        for _ in range(50):
            try:
                described = await admin.describe_topics([topic])
                return [p for t in described if t["topic"] == topic for p in t["partitions"]]
            except KafkaError:  # asked a random broker of the metadata: maybe the killed one
                await asyncio.sleep(0.1)
        raise AssertionError(f"no broker described {topic}")
    finally:
        await admin.close()


async def fully_replicated(cluster: KafkaCluster, topics: tuple[str, ...]) -> bool:
    """Every partition of ``topics`` has all its replicas in sync (a rolling restart's
    condition for moving on to the next broker)."""
    for topic in topics:
        for p in await partitions(cluster, topic):
            if p["leader"] < 0 or sorted(p["isr"]) != sorted(p["replicas"]):
                return False
    return True


async def produce_slowly(s: Stream, to: Settings) -> None:
    """The events arrive over several seconds, durably (acks=all, idempotent: the input
    itself loses and repeats nothing when a broker dies)."""
    for chunk in s.chunks:
        await produce(to, chunk, durable=True)
        await asyncio.sleep(0.8)


async def some_committed(settings: Settings, at_least: int) -> None:
    async def enough() -> bool:
        return sum((await committed(settings)).values()) >= at_least
    await wait_for(enough, 60, f"the run to commit {at_least} events")


async def assert_changes_topic_complete(r: aioredis.Redis, settings: Settings) -> None:
    """Every change in the Redis outbox is on the changes topic, each partition's first
    copies in outbox order; every repeat is a copy of the same change (same change id)."""
    outbox = {eid.decode(): fields[b"change"]
              for eid, fields in await r.xrange(f"{settings.redis_prefix}changes")}
    assert outbox
    async with TopicReader(settings, settings.changes_topic) as reader:
        async def all_there() -> bool:
            got = {_change_id(m) for m in await reader.read()}
            return set(outbox) <= got
        await wait_for(all_there, 60, "every change on the changes topic",
                       detail=lambda: f"{len(outbox)} in the outbox")
        await reader.read(timeout_ms=1000)  # and any late repeat
        messages = reader.messages
    ids = [_change_id(m) for m in messages]
    assert set(ids) == set(outbox)  # nothing on the topic that the outbox does not hold
    for m in messages:
        assert m.value == outbox[_change_id(m)]  # a repeat is the same change
    repeats = sum(n - 1 for n in Counter(ids).values())
    per_partition: dict[int, list[tuple[int, int]]] = {}
    seen: set[str] = set()
    for m in messages:
        cid = _change_id(m)
        if cid not in seen:
            seen.add(cid)
            ms, seq = cid.split("-")
            per_partition.setdefault(m.partition, []).append((int(ms), int(seq)))
    for p, order in per_partition.items():
        assert order == sorted(order), f"changes out of outbox order on partition {p}"
    print(f"changes topic: {len(outbox)} changes, {repeats} repeated copies")


def _change_id(message: Any) -> str:
    return dict(message.headers)["segmenter.change_id"].decode()


async def leader_of_most(cluster: KafkaCluster, topic: str) -> KafkaNode:
    leaders = Counter(p["leader"] for p in await partitions(cluster, topic))
    return cluster.node(leaders.most_common(1)[0][0])


async def test_kill_9_of_the_busiest_leader_then_restart_equals_an_uninterrupted_run(
        cluster: KafkaCluster, stream: Stream, r: aioredis.Redis, tmp_path: Path) -> None:
    settings, worker, producing = await start_run(
        stream, r, tmp_path, "leader-kill", "leader-kill", produce_slowly)
    try:
        await some_committed(settings, stream.total // 5)
        victim = await leader_of_most(cluster, settings.events_topic)
        victim.kill()
        others = tuple(n.node_id for n in cluster.nodes if n is not victim)

        async def moved() -> bool:  # the controller elects new leaders from the ISR
            return all(p["leader"] in others
                       for p in await partitions(cluster, settings.events_topic))
        await wait_for(moved, 60, "new leaders for the dead broker's partitions")
        before = sum((await committed(settings)).values())
        await some_committed(settings, before + 1)  # the worker goes on without it

        async def says_degraded() -> bool:  # healthy (it works), and says with what less
            status, body = worker.health()
            return status == 200 and any(f"broker {victim.node_id} out of sync" in d
                                         for d in body.get("degraded", []))
        await wait_for(says_degraded, 30, "/health to name the under-replicated partitions",
                       detail=lambda: str(worker.health()))
        assert worker.proc.poll() is None, worker.log()
        victim.start()
        await cluster.wait_ready()
        await producing
        await wait_for(lambda: caught_up(settings, stream.total), 120, "the worker to finish")
        await wait_for(lambda: fully_replicated(cluster, (settings.events_topic,)), 60,
                       "the restarted broker back in sync")

        async def whole_again() -> bool:
            status, body = worker.health()
            return status == 200 and body.get("degraded") == []
        await wait_for(whole_again, 30, "/health to say nothing is degraded any more",
                       detail=lambda: str(worker.health()))
    finally:
        producing.cancel()
        assert worker.stop() == 0, worker.log()
    assert_same(await final_state(r, settings, stream.ids),
                await reference(stream, r, tmp_path))
    await assert_changes_topic_complete(r, settings)


async def test_rolling_restart_of_all_three_brokers_equals_an_uninterrupted_run(
        cluster: KafkaCluster, stream: Stream, r: aioredis.Redis, tmp_path: Path) -> None:
    settings, worker, producing = await start_run(
        stream, r, tmp_path, "rolling", "rolling", produce_slowly)
    topics = (settings.events_topic, settings.changes_topic, "__consumer_offsets")
    try:
        await some_committed(settings, stream.total // 10)
        for node in cluster.nodes:
            # controlled shutdown (leaders move first); the JVM exits 143 after SIGTERM
            assert node.stop() in (0, 143), node.log()
            node.start()
            await cluster.wait_ready()
            await wait_for(lambda: fully_replicated(cluster, topics), 90,
                           f"node {node.node_id} back in sync")
        assert worker.proc.poll() is None, worker.log()
        await producing
        await wait_for(lambda: caught_up(settings, stream.total), 120, "the worker to finish")
    finally:
        producing.cancel()
        assert worker.stop() == 0, worker.log()
    assert_same(await final_state(r, settings, stream.ids),
                await reference(stream, r, tmp_path))
    await assert_changes_topic_complete(r, settings)
