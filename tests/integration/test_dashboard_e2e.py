"""The dashboard in a real headless browser: live data that matches /metrics and Redis."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.redis_io import connect
from stream.settings import Settings
from tests.integration.browser import browser  # noqa: F401  (fixture)
from tests.integration.helpers import WorkerProcess, produce, wait_for
from tests.integration.layout import counts, layout
from tests.integration.test_pipeline import lag_is_zero
from tests.integration.test_serving import seeded_worker

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


def metrics(worker: WorkerProcess) -> dict[str, float]:
    text = worker.metrics_text()
    settings = worker.settings

    def value(pattern: str) -> float:
        return sum(float(v) for v in re.findall(pattern + r" (\S+)$", text, re.M))
    return {
        "model_version": value(r"^segmenter_model_version"),
        "lag": value(r'^segmenter_consumer_lag\{partition="\d+",topic="'
                     + re.escape(settings.events_topic) + '"}'),
        "dead": value(r'^segmenter_events_total\{outcome="dead_lettered",type="invalid"\}'),
    }


async def shown(page: Any) -> dict[str, Any]:
    sizes = {}
    for row in await page.query_selector_all("[data-testid=segments] tbody tr"):
        size = await (await row.query_selector(".size")).get_attribute("data-value")
        sizes[await row.get_attribute("data-segment")] = int(size)
    return {
        "model_version": float(await page.inner_text("[data-testid=model-version]")),
        "lag": float(await page.get_attribute("[data-testid=lag]", "data-value") or -1),
        "dead": float(await page.get_attribute("[data-testid=dead-lettered]", "data-value")),
        "sizes": sizes,
    }


async def test_dashboard_shows_live_numbers(settings: Settings, tmp_path: Path,
                                            browser: Any) -> None:  # noqa: F811
    worker, _ = await seeded_worker(settings, tmp_path, customers=500)
    r = connect(settings.redis_url, cluster=settings.redis_cluster)
    keys = layout(r, settings.redis_prefix)
    try:
        await produce(settings, [(b"x", b"{broken") for _ in range(7)])
        await wait_for(lambda: lag_is_zero(settings), 30, "bad messages to be consumed")

        async def worker_sees_no_lag() -> bool:  # its gauge follows on a 2 s timer
            return metrics(worker)["lag"] == 0
        await wait_for(worker_sees_no_lag, 20, "the worker's lag metric to reach 0")
        page = await browser.new_page(viewport={"width": 1400, "height": 1000})
        await page.goto(f"http://127.0.0.1:{settings.web_port}/")
        await page.wait_for_function("document.body.dataset.updated", timeout=20_000)
        await page.wait_for_function(
            "document.querySelector('[data-testid=dead-lettered]').dataset.value === '7'",
            timeout=20_000)
        expected: dict[str, Any] = {}
        got: dict[str, Any] = {}
        for _ in range(10):  # the page and the metrics refresh every 2 s: compare when settled
            got = await shown(page)
            expected = metrics(worker)
            profiles = {k.decode(): orjson.loads(v) for k, v in
                        (await r.hgetall(keys.segments)).items()}
            # retired segments are out of the way: listed only on request
            expected["sizes"] = {k: v for k, v in
                                 (await counts(r, settings.redis_prefix, "sizes")).items()
                                 if profiles.get(k, {}).get("status") != "retired"}
            if got == expected:
                break
            await asyncio.sleep(1)
        assert got == expected
        assert expected["model_version"] >= 1 and expected["dead"] == 7
        assert expected["lag"] == 0
        assert await page.inner_text("#status") == "healthy"
        # the sizes over time keep every segment's history, retired ones included
        assert await page.locator("#sizes polyline").count() == len(
            await counts(r, settings.redis_prefix, "sizes"))
        # the model card shows the published model's criterion per segment count tried
        snapshot = orjson.loads(await r.get(keys.model) or b"{}")
        crit = snapshot["criterion"]
        rows = await page.eval_on_selector_all(
            "[data-testid=criterion] tbody tr",
            "rs => rs.map(r => [r.dataset.count, ...[...r.children].slice(1).map(c => "
            "c.textContent)])")
        # shown with 3 decimals: off by at most half the last digit (1.4805 shows as 1.481)
        assert {k: float(v) for k, v, _ in rows} == pytest.approx(crit["by_count"],
                                                                   abs=5e-4 + 1e-9)
        assert [k for k, _, chosen in rows if chosen] == [str(len(snapshot["ids"]))]
        lifecycle = await page.inner_text("[data-testid=lifecycle]")
        assert "born" in lifecycle
        retired = sorted(k for k, p in profiles.items() if p.get("status") == "retired")
        assert await page.inner_text("[data-testid=retired-count]") == str(len(retired))
        if retired:  # on request, after the active ones
            await page.check("[data-testid=show-retired]")
            await page.wait_for_function(
                f"document.querySelectorAll('[data-testid=segments] tbody tr').length === "
                f"{len(profiles)}", timeout=10_000)
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        await page.close()
    finally:
        await r.aclose()
        assert worker.stop() == 0, worker.log()
