"""``segmenter replay`` against the real broker (and a real worker for ``--wait``): CSV and
JSON lines, gzip, ``--map``, invalid lines reported and not sent, progress and summary."""

from __future__ import annotations

import asyncio
import gzip
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
from aiokafka.partitioner import DefaultPartitioner

from models.simulator import ShopSimulator
from stream.kafka_io import read_lag_once
from stream.settings import Settings
from tests.integration.helpers import WorkerProcess, consume_all


async def run_replay(settings: Settings, *args: str, timeout: float = 180,
                     **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **settings.with_env(), **env}
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "stream.cli", "replay", *args], env=full_env,
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


ORDERS = """InvoiceNo,CustomerID,InvoiceDate,UnitTotal,StockCode,Country,Description
536365,17850,1997-01-01T08:26:00+00:00,15.30,85123A,GB,"WHITE HANGING HEART, T-LIGHT"
536366,17850,1997-03-04 21:15,22.00,71053,GB,WHITE METAL LANTERN
536367,13047,1969-12-31T23:59:59+00:00,5,84406B,GB,CREAM CUPID
536368,,1998-02-01T10:00:00+00:00,5,84406B,GB,no customer
536369,13047,2999-01-01T10:00:00+00:00,5,84406B,GB,far future
536370,13047,852076800000,abc,84406B,GB,bad amount
536371,12583,1998-06-30T18:45:00-05:00,99.5,22423,FR,REGENCY CAKESTAND
"""
MAPS = ["--map", "InvoiceNo=event_id", "--map", "CustomerID=customer_id",
        "--map", "InvoiceDate=timestamp", "--map", "UnitTotal=amount",
        "--map", "StockCode=product_id", "--map", "Country=country", "--map", "Description="]


async def test_csv_gz_with_map_reports_invalid_lines_and_sends_the_rest(
        settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "orders.csv.gz"
    path.write_bytes(gzip.compress(ORDERS.encode()))
    rejects = tmp_path / "rejects.jsonl"
    done = await run_replay(settings, str(path), *MAPS, "--type", "purchase", "--tz", "Z",
                            "--rejects", str(rejects))
    assert done.returncode == 1, done.stderr  # some lines were invalid
    out = done.stdout
    assert "7 lines" in out and "sent                3 to topic" in out, out
    assert "invalid             4 (not sent, written to" in out, out
    assert "is before the Unix epoch (1970-01-01T00:00:00Z) (line 4)" in out
    assert "missing field 'customer_id' (line 5)" in out
    assert "ahead of the clock by more than SEGMENTER_MAX_FUTURE_S (after …) (line 6)" in out
    assert "properties.amount must be a number, got str (line 7)" in out
    assert "100% [" in done.stderr and "ETA" in done.stderr  # the progress line
    rejected = [orjson.loads(line) for line in rejects.read_bytes().splitlines()]
    assert [r["line"] for r in rejected] == [4, 5, 6, 7]
    assert rejected[1]["input"] == "536368,,1998-02-01T10:00:00+00:00,5,84406B,GB,no customer"

    msgs = await consume_all(settings, settings.events_topic, expect=3, timeout=20)
    got = sorted((orjson.loads(m.value) for m in msgs), key=lambda e: e["event_id"])
    assert [e["event_id"] for e in got] == ["536365", "536366", "536371"]
    assert got[0] == {"event_id": "536365", "customer_id": "17850", "type": "purchase",
                      "timestamp": "1997-01-01T08:26:00+00:00",
                      "properties": {"amount": 15.3, "product_id": "85123A", "country": "GB"}}
    assert got[1]["timestamp"] == "1997-03-04T21:15:00+00:00"  # --tz for a naive time
    assert got[2]["properties"]["product_id"] == "22423"  # an id stays a string
    parts = sorted(set(range(settings.partitions)))
    for m in msgs:  # keyed by customer, on Kafka's default partition for that key
        assert m.key == orjson.loads(m.value)["customer_id"].encode()
        assert m.partition == DefaultPartitioner()(m.key, parts, parts)


async def test_jsonl_invalid_lines_by_reason_and_future_setting(
        settings: Settings, tmp_path: Path) -> None:
    def ev(i: int, ts: object) -> bytes:
        return orjson.dumps({"event_id": f"e{i}", "customer_id": f"c{i % 3}",
                             "type": "page_view", "timestamp": ts})

    now = int(time.time() * 1000)
    lines = [ev(1, "1997-01-01T00:00:00+00:00"), ev(2, now), b"{not json",
             ev(4, now + 2 * 3_600_000), b"", ev(6, -5), ev(7, 0), ev(8, now + 1_800_000)]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    done = await run_replay(settings, str(path), SEGMENTER_MAX_FUTURE_S="3600")
    assert done.returncode == 1, done.stderr
    assert "7 lines" in done.stdout and "sent                4" in done.stdout, done.stdout
    assert "value is not valid UTF-8 JSON (line 3)" in done.stdout
    assert "ahead of the clock by more than SEGMENTER_MAX_FUTURE_S (after …) (line 4)" \
        in done.stdout
    assert "is before the Unix epoch (1970-01-01T00:00:00Z) (line 6)" in done.stdout
    msgs = await consume_all(settings, settings.events_topic, expect=4, timeout=20)
    assert sorted(m.value for m in msgs) == sorted([lines[0], lines[1], lines[6], lines[7]])

    # --check validates the same way and sends nothing
    again = await run_replay(settings, str(path), "--check", SEGMENTER_MAX_FUTURE_S="3600")
    assert again.returncode == 1 and "(nothing sent: --check)" in again.stdout
    assert len(await consume_all(settings, settings.events_topic, expect=5, timeout=3)) == 4


async def test_wait_returns_once_a_real_worker_has_caught_up(
        settings: Settings, tmp_path: Path) -> None:
    sim = ShopSimulator(customers=400, seed=5, days=10)
    events = list(sim.history())
    path = tmp_path / "history.data"  # gzipped JSON lines, told by the bytes alone
    path.write_bytes(gzip.compress(b"".join(orjson.dumps(e) + b"\n" for e in events)))
    worker = WorkerProcess(settings, tmp_path)
    try:
        await worker.wait_healthy()
        done = await run_replay(settings, str(path), "--wait", "--wait-timeout", "150")
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"sent     {len(events):>12,}" in done.stdout, done.stdout
        assert f"group {settings.group} caught up" in done.stdout
        # right when replay returns, the group has committed every event it sent
        # (a fresh topic: the committed offsets add up to the events in it)
        rows = await read_lag_once(settings.kafka, settings.group, settings.events_topic)
        assert sum(r.committed or 0 for r in rows) == len(events), rows
        assert sum(r.lag for r in rows) == 0, rows
        status, health = worker.health()
        assert status == 200 and health["processed"] >= len(events), health
    finally:
        assert worker.stop() == 0, worker.log()


async def test_wait_gives_up_without_a_worker(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    path.write_bytes(orjson.dumps({"event_id": "e1", "customer_id": "c1", "type": "search",
                                   "timestamp": 0}) + b"\n")
    done = await run_replay(settings, str(path), "--wait", "--wait-timeout", "2")
    assert done.returncode == 1
    assert "sent                1" in done.stdout
    assert f"group {settings.group} NOT caught up (timed out)" in done.stdout, done.stdout
