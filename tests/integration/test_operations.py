"""Operations: broker-measured lag, `segmenter lag`, /health through a Redis outage."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.embedded import start_redis
from stream.kafka_io import ensure_topics
from stream.settings import Settings
from tests.conftest import broker_kind
from tests.integration.helpers import WorkerProcess, produce, wait_for
from tests.integration.test_pipeline import lag_is_zero


def events(n: int, start: int = 0) -> list[tuple[bytes | None, bytes | None]]:
    return [(f"c{i % 97}".encode(), orjson.dumps({
        "event_id": f"e{i}", "customer_id": f"c{i % 97}", "type": "page_view",
        "timestamp": 1767225600000 + i * 1000})) for i in range(start, start + n)]


async def independent_lag(settings: Settings) -> dict[int, int]:
    """End offsets by reading every record from the start; committed offsets from aiokafka."""
    reader = AIOKafkaConsumer(settings.events_topic, bootstrap_servers=settings.kafka,
                              group_id=None, auto_offset_reset="earliest")
    await reader.start()
    ends: dict[int, int] = {p: 0 for p in range(settings.partitions)}
    idle = 0
    try:
        while idle < 3:
            batch = await reader.getmany(timeout_ms=300)
            idle = 0 if batch else idle + 1
            for tp, msgs in batch.items():
                ends[tp.partition] = max(ends[tp.partition], msgs[-1].offset + 1)
    finally:
        await reader.stop()
    group = AIOKafkaConsumer(bootstrap_servers=settings.kafka, group_id=settings.group,
                             enable_auto_commit=False)
    await group.start()
    try:
        out = {}
        for p, end in ends.items():
            committed = await group.committed(TopicPartition(settings.events_topic, p))
            out[p] = end - (committed or 0)
        return out
    finally:
        await group.stop()


def metric_lag(worker: WorkerProcess) -> dict[int, float]:
    text = worker.metrics_text()
    out = {}
    for m in re.finditer(r'^segmenter_consumer_lag\{partition="(\d+)",topic="([^"]+)"\} (\S+)$',
                         text, re.M):
        if m.group(2) == worker.settings.events_topic:
            out[int(m.group(1))] = float(m.group(3))
    return out


def lag_cli(settings: Settings, *extra: str) -> tuple[int, str]:
    out = subprocess.run([sys.executable, "-m", "stream.cli", "lag", *extra],
                         env={**os.environ, **settings.with_env()}, capture_output=True,
                         text=True, timeout=60)
    return out.returncode, out.stdout + out.stderr


async def test_lag_grows_while_stopped_and_returns_to_zero(settings: Settings,
                                                           tmp_path: Path) -> None:
    await ensure_topics(settings)
    await produce(settings, events(2000))
    worker = WorkerProcess(settings, tmp_path)
    await worker.wait_healthy()
    await wait_for(lambda: lag_is_zero(settings), 60, "the worker to catch up")
    assert worker.stop() == 0, worker.log()
    await produce(settings, events(3000, start=2000))  # batched: big record batches
    code, text = lag_cli(settings)
    assert code == 0, text
    total = int(re.search(r"^\s*TOTAL\s+(\d+)", text, re.M).group(1))  # type: ignore[union-attr]
    assert total == 3000 == sum((await independent_lag(settings)).values()), text
    total_line = next(line for line in text.splitlines() if line.strip().startswith("TOTAL"))
    assert float(total_line.split()[-1]) > 0, text  # seconds behind
    assert lag_cli(settings, "--max-lag", "2999")[0] == 1
    assert lag_cli(settings, "--max-lag", "3000")[0] == 0
    worker = WorkerProcess(settings, tmp_path, "worker-again")
    try:
        await worker.wait_healthy()
        await wait_for(lambda: lag_is_zero(settings), 60, "the worker to catch up again")
        code, text = lag_cli(settings, "--max-lag", "0")
        assert code == 0, text
        if broker_kind() == "apache":  # DescribeGroups names the owner of every partition
            rows = [line.split() for line in text.splitlines()
                    if re.match(r"^\s*\d+\s", line)]
            assert len(rows) == settings.partitions, text
            assert all(len(r) == 6 and r[5] != "-" for r in rows), text
    finally:
        assert worker.stop() == 0, worker.log()


async def test_health_and_lag_through_a_redis_outage(settings: Settings,
                                                     tmp_path: Path) -> None:
    redis_server = start_redis()  # this test's own Redis, to stop and start again
    # (one Redis of its own, whichever the suite runs on: its outage is that one's, as in
    # test_faults' Redis outage; on a cluster the worker would refuse a non-cluster node)
    settings = dataclasses.replace(settings, redis_url=redis_server.url, redis_cluster=False)
    await ensure_topics(settings)
    await produce(settings, events(1000))
    worker = WorkerProcess(settings, tmp_path)
    try:
        await worker.wait_healthy()
        await wait_for(lambda: lag_is_zero(settings), 60, "the worker to catch up")
        redis_server.stop()

        async def unhealthy() -> bool:
            status, body = worker.health()
            return status == 503 and any("Redis" in r for r in body["reasons"])
        await wait_for(unhealthy, 30, "/health to report Redis down")
        await produce(settings, events(1500, start=1000))

        async def stalled_lag_reported() -> bool:
            return sum(metric_lag(worker).values()) >= 1500 - settings.batch_max
        await wait_for(stalled_lag_reported, 30, "the lag metric to grow while stalled")
        # the metric follows end - committed, read here independently from the broker
        first = await independent_lag(settings)
        expected = first

        async def metric_is_broker_lag() -> bool:
            nonlocal expected
            expected = await independent_lag(settings)
            return await _equal(worker, expected)
        await wait_for(metric_is_broker_lag, 15, "metric == end - committed",
                       detail=lambda: f"metric {metric_lag(worker)}, broker {expected}")
        assert expected == first  # stuck on Redis, the worker committed nothing meanwhile
        assert worker.proc.poll() is None  # it waits; it does not die
        redis_server = start_redis(redis_server.port)
        await wait_for(lambda: _healthy(worker), 60, "/health to recover")
        await wait_for(lambda: lag_is_zero(settings), 60, "the worker to catch up")
        await wait_for(lambda: _equal(worker, {p: 0 for p in expected}), 15, "metric back to 0")
    finally:
        try:
            assert worker.stop() == 0, worker.log()
        finally:  # not left running when the worker failed
            redis_server.stop()


async def _equal(worker: WorkerProcess, expected: dict[int, int]) -> bool:
    got = metric_lag(worker)
    return {p: int(v) for p, v in got.items()} == expected


async def _healthy(worker: WorkerProcess) -> bool:
    return worker.health()[0] == 200


async def committed_total(settings: Settings) -> int:
    """The group's committed offsets on the events topic, summed (read without joining)."""
    c = AIOKafkaConsumer(bootstrap_servers=settings.kafka, group_id=settings.group,
                         enable_auto_commit=False)
    await c.start()
    try:
        return sum([await c.committed(TopicPartition(settings.events_topic, p)) or 0
                    for p in range(settings.partitions)])
    finally:
        await c.stop()


async def test_a_backlog_is_committed_on_the_behind_interval_then_at_once(
        settings: Settings, tmp_path: Path) -> None:
    """Behind, states are flushed and offsets committed every ``commit_interval_behind_s``
    (here longer than the backlog lasts); caught up, every ``commit_interval_s`` (0.2 s), at
    once: the committed offsets go from nothing to (about) the end in one step."""
    s = dataclasses.replace(settings, commit_interval_s=0.2, commit_interval_behind_s=600.0,
                            batch_max=500)
    await ensure_topics(s)
    n = 60_000  # > 1 s of work: with the live interval while behind, commits on the way
    await produce(s, events(n))
    seen: set[int] = set()

    async def committed_all() -> bool:
        seen.add(total := await committed_total(s))
        return total == n

    worker = WorkerProcess(s, tmp_path)
    try:
        await wait_for(committed_all, 120, "the backlog to be committed once caught up",
                       every=0.05)
    finally:
        assert worker.stop() == 0, worker.log()
    # caught up means fewer than a batch and a live batch left (stream.consume.BatchReader)
    near = n - s.batch_max - s.live_batch_max
    assert all(t == 0 or t >= near for t in seen), f"committed while behind: {sorted(seen)}"
