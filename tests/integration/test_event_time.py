"""Event time through a real worker: any time from the Unix epoch on is applied (history of
the 1990s included); a time more than ``SEGMENTER_MAX_FUTURE_S`` ahead of the worker's clock,
or before the epoch, is dead-lettered with the reason."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import orjson
import pytest

from stream.kafka_io import ensure_topics, read_lag_once
from stream.redis_io import connect
from stream.settings import Settings
from tests.integration.helpers import WorkerProcess, consume_all, produce, wait_for


async def caught_up(settings: Settings, total: int) -> bool:
    rows = await read_lag_once(settings.kafka, settings.group, settings.events_topic)
    return sum(r.committed or 0 for r in rows) >= total


@pytest.mark.parametrize("helper", [True, False], ids=["validation-helper", "inline"])
async def test_old_history_applied_far_future_dead_lettered(
        settings: Settings, tmp_path: Path, helper: bool) -> None:
    settings = dataclasses.replace(settings, max_future_s=3600.0, parse_process=helper)
    await ensure_topics(settings)
    now = int(time.time() * 1000)
    times: dict[str, object] = {
        "old-iso": "1997-01-01T00:00:00+00:00", "old-ms": 852_076_800_000, "epoch": 0,
        "now": now, "soon": now + 1_800_000,  # within the hour of skew
        "future": now + 3 * 3_600_000, "future-iso": "2999-01-01T00:00:00Z",
        "pre-epoch": "1969-12-31T23:59:59+00:00",
    }
    msgs: list[tuple[bytes | None, bytes | None]] = [
        (cid.encode(), orjson.dumps({"event_id": f"e-{cid}", "customer_id": cid,
                                     "type": "page_view", "timestamp": ts}))
        for cid, ts in times.items()]
    await produce(settings, msgs)
    worker = WorkerProcess(settings, tmp_path)
    client = connect(settings.redis_url, cluster=settings.redis_cluster)
    try:
        await worker.wait_healthy()
        await wait_for(lambda: caught_up(settings, len(msgs)), 90, "the worker to catch up")
        dead = await consume_all(settings, settings.dlq_topic, expect=3, timeout=20)
        reasons = {m.key.decode(): dict(m.headers)["segmenter.error.reason"].decode()
                   for m in dead}
        assert set(reasons) == {"future", "future-iso", "pre-epoch"}, reasons
        assert "ahead of the clock by more than SEGMENTER_MAX_FUTURE_S" in reasons["future"]
        assert "before the Unix epoch" in reasons["pre-epoch"]
        for cid in ("old-iso", "old-ms", "epoch", "now", "soon"):  # applied: a state each
            assert await client.exists(f"{settings.redis_prefix}state:{{{cid}}}"), cid
        for cid in reasons:
            assert not await client.exists(f"{settings.redis_prefix}state:{{{cid}}}"), cid
    finally:
        await client.aclose()
        assert worker.stop() == 0, worker.log()
