"""The worker's lag reader between reads: right figures, nothing fetched ahead, quiet logs."""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
import pytest

from stream.kafka_io import LagReader, ensure_topics
from stream.settings import Settings
from tests.conftest import broker_kind
from tests.integration.helpers import produce


async def test_reads_repeat_right_and_fetch_nothing_in_between(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    await ensure_topics(settings)
    await produce(settings, [(f"c{i % 7}".encode(), orjson.dumps({"i": i}))
                             for i in range(3000)])  # batched: big record batches
    reader = LagReader(settings.kafka, settings.group, settings.events_topic)
    await reader.start()
    try:
        if broker_kind() != "external":  # the embedded broker's workarounds only on it
            assert reader.standard == (broker_kind() == "apache")
        caplog.set_level(logging.INFO)
        for _ in range(3):
            rows = await reader.read()
            assert sum(r.lag for r in rows) == 3000
            assert all(r.oldest_unprocessed_ms for r in rows if r.lag)
            # Paused between reads: nothing is fetched ahead for a later seek to drop
            # (dropped fetch results are cyclic garbage holding their buffers).
            assert reader._consumer.paused() == reader._consumer.assignment()
            await asyncio.sleep(0.5)
        chatter = [r for r in caplog.records if r.name.startswith("aiokafka")
                   and r.getMessage().startswith(("Updating subscribed", "Discovered"))]
        assert chatter == []  # re-assigning on every read no longer logs tables each time
    finally:
        await reader.close()


async def test_a_start_cut_short_leaves_no_consumer_open(settings: Settings) -> None:
    # The demo's Ctrl-C can land while its lag read is connecting; the consumer left behind
    # then printed "Unclosed AIOKafkaConsumer" at exit (aiokafka's check: its _closed flag).
    cut_short = 0
    for delay in (0.0, 0.001, 0.005, 0.02, 0.05):
        reader = LagReader(settings.kafka, settings.group, settings.events_topic)
        starting = asyncio.create_task(reader.start())
        await asyncio.sleep(delay)
        starting.cancel()
        try:
            await starting
        except asyncio.CancelledError:
            cut_short += 1
            assert reader._consumer._closed is True
        else:
            await reader.close()  # it had finished starting: closed the normal way
    assert cut_short  # at least the first one (cancelled before it ran) was cut short


async def test_a_read_without_the_oldest_record_in_time_keeps_its_last_known_age(
        settings: Settings) -> None:
    # Under load the Fetch of a lagging partition's oldest record can time out; that once
    # showed "seconds behind 0 ms" with a lag of 102,921 on the dashboard.
    await ensure_topics(settings)
    await produce(settings, [(f"c{i % 7}".encode(), orjson.dumps({"i": i}))
                             for i in range(500)])
    reader = LagReader(settings.kafka, settings.group, settings.events_topic)
    await reader.start()
    fresh = LagReader(settings.kafka, settings.group, settings.events_topic)
    await fresh.start()
    try:
        now_ms = int(time.time() * 1000) + 5000
        first = {r.partition: r for r in await reader.read()}
        assert all(r.seconds_behind(now_ms) for r in first.values() if r.lag)
        again = await reader.read(timeout=0)  # no time to fetch a record this time
        for r in again:
            if r.lag:
                assert r.oldest_unprocessed_ms == first[r.partition].oldest_unprocessed_ms
                assert (r.seconds_behind(now_ms) or 0) >= 5
        # a reader that never read the record: unknown, never 0
        lagging = [r for r in await fresh.read(timeout=0) if r.lag]
        assert lagging and all(r.seconds_behind(now_ms) is None for r in lagging)
    finally:
        await reader.close()
        await fresh.close()
