"""The worker's rounds beside the hot path (stream.monitor): a lag read that fails while the
consumer gets records is a busy worker (degraded), not an unreachable broker; warnings name
the exception even when its message is empty; rounds never overlap; seconds behind is never
0 while events wait."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from stream.health import Health
from stream.lag import PartitionLag, most_behind
from stream.metrics import Metrics
from stream.monitor import LagWatch, every


class SlowReader:
    """A lag reader whose reads take ``seconds`` (a loop busy applying batches)."""

    def __init__(self, seconds: float, rows: list[PartitionLag]) -> None:
        self.seconds, self.rows = seconds, rows
        self.offline: list[str] = []
        self.degraded: list[str] = []

    async def read(self) -> list[PartitionLag]:
        await asyncio.sleep(self.seconds)
        return self.rows


ROWS = [PartitionLag("events", 0, 100, 5100, int(time.time() * 1000) - 48_000)]


def watch(reader: SlowReader, fetched: Any) -> tuple[LagWatch, Health, Metrics]:
    health, metrics = Health(), Metrics()
    return LagWatch(reader, health, metrics, fetched, timeout=0.05), health, metrics  # type: ignore[arg-type]


async def test_a_slow_lag_read_while_consuming_is_degraded_not_unavailable(
        caplog: pytest.LogCaptureFixture) -> None:
    reader = SlowReader(0, ROWS)
    lag, health, metrics = watch(reader, time.time)  # records keep arriving
    await lag.read()
    assert lag.totals(int(time.time() * 1000)) is not None
    reader.seconds = 1.0  # now slower than the timeout
    caplog.set_level(logging.INFO, logger="stream.monitor")
    await lag.read()
    assert health.reasons() == []  # /health stays 200
    assert any("TimeoutError()" in d and "consumes" in d for d in health.degraded())
    assert "TimeoutError()" in caplog.text  # never an empty reason
    totals = lag.totals(int(time.time() * 1000))  # the last figures stand
    assert totals is not None and totals[0] == 5000 and (totals[1] or 0) >= 48
    reader.seconds = 0
    await lag.read()
    assert health.reasons() == [] and health.degraded() == []


async def test_a_failed_lag_read_without_records_fetched_is_kafka_unreachable(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="stream.monitor")
    lag, health, _ = watch(SlowReader(1.0, ROWS), lambda: time.time() - 60)
    await lag.read()
    assert health.reasons() == ["Kafka unreachable: TimeoutError()"]
    assert [r.getMessage() for r in caplog.records] == ["lag read failed: TimeoutError()"]
    assert lag.totals(0) is None  # no read yet: no dashboard sample


async def test_rounds_start_a_pause_after_the_previous_one_ended() -> None:
    spans: list[tuple[float, float]] = []
    loop = asyncio.get_running_loop()

    async def round_() -> None:
        started = loop.time()
        await asyncio.sleep(0.05)  # longer than the interval
        spans.append((started, loop.time()))
        if len(spans) == 1:
            raise RuntimeError("a round that fails")  # logged; the rounds go on

    task = asyncio.create_task(every(0.01, round_))
    await asyncio.sleep(0.3)
    task.cancel()
    assert len(spans) >= 3
    for (_, ended), (started, _) in zip(spans, spans[1:], strict=False):
        assert started >= ended + 0.009  # never two at once, never a catch-up burst


def test_seconds_behind_is_unknown_not_zero_while_events_wait() -> None:
    now = 1_800_000_000_000
    waiting = PartitionLag("events", 0, 100, 103_021, None)  # its record's time not read
    assert waiting.lag == 102_921
    assert waiting.seconds_behind(now) is None
    assert PartitionLag("events", 1, 5, 5, None).seconds_behind(now) == 0.0  # caught up
    known = PartitionLag("events", 2, 5, 9, now - 43_000)
    assert known.seconds_behind(now) == 43.0
    assert most_behind([waiting], now) is None
    assert most_behind([waiting, known], now) == 43.0
