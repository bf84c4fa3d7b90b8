"""Before the first model: a small shop's worker says why nobody has a segment yet, in
``/health`` and in a lookup, and gives everyone a segment once enough customers came."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import orjson

from models.simulator import ShopSimulator
from stream.settings import Settings
from tests.integration.helpers import WorkerProcess, produce, wait_for
from tests.integration.test_pipeline import lag_is_zero


async def test_a_small_shop_is_told_what_the_first_model_waits_for(
        settings: Settings, tmp_path: Path) -> None:
    settings = dataclasses.replace(settings, warmup=150)
    first = ShopSimulator(60, seed=3, days=10)
    worker = WorkerProcess(settings, tmp_path)
    try:
        await worker.wait_healthy()
        await produce(settings, [(e["customer_id"].encode(), orjson.dumps(e))
                                 for e in first.history()])
        await wait_for(lambda: lag_is_zero(settings), 60, "the first customers")
        status, body = worker.health()
        assert status == 200 and "waiting for" in body["model"], body
        assert "SEGMENTER_WARMUP" in body["model"]
        status, body = worker.get("/customers/c000001/segment")
        assert status == 404 and "no model yet" in body["model"], body
        more = ShopSimulator(200, seed=4, days=10, prefix="m")
        await produce(settings, [(e["customer_id"].encode(), orjson.dumps(e))
                                 for e in more.history()])

        async def segmented() -> bool:
            status, body = worker.get("/customers/m000001/segment")
            return status == 200 and "model" not in worker.health()[1]
        await wait_for(segmented, 90, "a first model once 150 customers came")
    finally:
        assert worker.stop() == 0, worker.log()
