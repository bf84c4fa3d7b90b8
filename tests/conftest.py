"""Fixtures: a real Kafka-compatible broker and a real Redis-compatible server.

By default both are the embedded servers, started once per session on free ports. With
``SEGMENTER_TEST_BROKER=apache`` the broker is Apache Kafka instead (KRaft nodes started by
tests/integration/apache_kafka.py: one, or three with ``SEGMENTER_TEST_KAFKA_BROKERS=3``;
needs Java 17 and Maven) beside the embedded Redis. With ``SEGMENTER_TEST_REDIS=cluster`` Redis
is a cluster of three Valkey primaries (tests/integration/redis_cluster.py) and the worker
runs the sharded layout (``SEGMENTER_REDIS_CLUSTER=1``). When
``SEGMENTER_KAFKA`` and ``SEGMENTER_REDIS_URL`` are set, the same tests run against those.
Every test gets its own topics, consumer group and Redis key prefix.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from stream.embedded import embedded_stack, free_port, start_redis
from stream.redis_io import connect
from stream.settings import Settings


@pytest.fixture(scope="session")
def servers() -> Iterator[tuple[str, str]]:
    kafka, redis = os.environ.get("SEGMENTER_KAFKA"), os.environ.get("SEGMENTER_REDIS_URL")
    if kafka and redis:
        yield kafka, redis
        return
    if broker_kind() == "apache":
        from tests.integration.apache_kafka import apache_kafka

        with apache_kafka(apache_brokers()) as cluster, redis_server() as url:
            yield cluster.bootstrap, url
        return
    if redis_kind() == "cluster":
        with embedded_stack() as (k, _), redis_server() as url:
            yield k.url, url
        return
    with embedded_stack() as (k, r):
        yield k.url, r.url


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """The Redis the suite runs on beside a broker of its own: one embedded Valkey, or a
    cluster of three (``SEGMENTER_TEST_REDIS=cluster``); yields its URL."""
    if redis_kind() == "cluster":
        from tests.integration.redis_cluster import redis_cluster

        with redis_cluster(3) as url:
            yield url
        return
    valkey = start_redis()
    try:
        yield valkey.url
    finally:
        valkey.stop()


def redis_kind() -> str:
    """``single`` (one Valkey, the default) or ``cluster`` (``SEGMENTER_TEST_REDIS``)."""
    kind = os.environ.get("SEGMENTER_TEST_REDIS", "single")
    if kind not in ("single", "cluster"):
        raise pytest.UsageError(f"SEGMENTER_TEST_REDIS={kind!r}: single or cluster")
    return kind


def broker_kind() -> str:
    """``embedded`` (Tansu, the default) or ``apache`` (``SEGMENTER_TEST_BROKER``), or
    ``external`` (``SEGMENTER_KAFKA`` and ``SEGMENTER_REDIS_URL`` set: servers of unknown kind)."""
    if os.environ.get("SEGMENTER_KAFKA") and os.environ.get("SEGMENTER_REDIS_URL"):
        return "external"
    broker = os.environ.get("SEGMENTER_TEST_BROKER", "embedded")
    if broker not in ("embedded", "apache"):
        raise pytest.UsageError(f"SEGMENTER_TEST_BROKER={broker!r}: embedded or apache")
    return broker


def apache_brokers() -> int:
    """Nodes of the Apache Kafka cluster under the suite: 1 (the default) or 3
    (``SEGMENTER_TEST_KAFKA_BROKERS``; topics then get replication factor 3)."""
    n = int(os.environ.get("SEGMENTER_TEST_KAFKA_BROKERS", "1"))
    if n not in (1, 3):
        raise pytest.UsageError(f"SEGMENTER_TEST_KAFKA_BROKERS={n}: 1 or 3")
    return n


@pytest.fixture
def settings(servers: tuple[str, str]) -> Settings:
    return make_settings(servers)


@pytest_asyncio.fixture
async def r(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    """A Redis client on the test's server (its keys are under the test's own prefix)."""
    client = connect(settings.redis_url, cluster=settings.redis_cluster)
    yield client
    await client.aclose()


def make_settings(servers: tuple[str, str]) -> Settings:
    """Settings on these servers with fresh topics, group, key prefix and web port."""
    uid = uuid.uuid4().hex[:8]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGMENTER_")}
    env.update({
        "SEGMENTER_KAFKA": servers[0],
        "SEGMENTER_REDIS_URL": servers[1],
        "SEGMENTER_EVENTS_TOPIC": f"events-{uid}",
        "SEGMENTER_DLQ_TOPIC": f"events-dlq-{uid}",
        "SEGMENTER_CHANGES_TOPIC": f"segment-changes-{uid}",
        "SEGMENTER_LIFECYCLE_TOPIC": f"segment-lifecycle-{uid}",
        "SEGMENTER_AUDIENCE_CHANGES_TOPIC": f"audience-changes-{uid}",
        "SEGMENTER_GROUP": f"segmenter-{uid}",
        "SEGMENTER_REDIS_PREFIX": f"t{uid}:",
        "SEGMENTER_WEB_PORT": str(free_port()),
        "SEGMENTER_PARTITIONS": "4",
        "SEGMENTER_WARMUP": "300",
        "SEGMENTER_MODEL_UPDATE_EVERY": "1000",
        "SEGMENTER_API_TOKEN": "test-token-" + uid,
        "SEGMENTER_CORS_ORIGINS": "http://shop.example",
    })
    if redis_kind() == "cluster":
        env["SEGMENTER_REDIS_CLUSTER"] = "1"
    if broker_kind() == "apache":
        env["SEGMENTER_REPLICATION"] = str(apache_brokers())
    return Settings.from_env(env)
