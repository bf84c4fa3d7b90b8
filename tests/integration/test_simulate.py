"""``segmenter simulate`` says what it does: the demo's simulator.log was empty."""

from __future__ import annotations

import logging

import pytest

from stream.kafka_io import read_lag_once
from stream.produce import simulate
from stream.settings import Settings


async def test_the_simulator_logs_its_plan_progress_and_totals(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="stream.produce")
    sent = await simulate(settings, customers=40, events=2500, rate=0.0, days=3.0, seed=3,
                          drift=0.0, live=True, history_rate=0)
    assert sent == 2500
    rows = await read_lag_once(settings.kafka, settings.group, settings.events_topic)
    assert sum(r.lag for r in rows) == 2500  # nothing consumed yet: all of it is there
    lines = [r.getMessage() for r in caplog.records if r.name == "stream.produce"]
    assert lines[0].startswith("simulating 40 customers into ")
    assert "3 days of history as a backfill" in lines[0]
    done = [x for x in lines if " events sent in " in x]
    assert done, lines  # each phase's total, with its rate and customers
    total = sum(int(x.split(": ")[1].split(" ")[0]) for x in done)
    assert total == 2500
    assert all("events/s" in x and x.endswith("customers") for x in done)
