"""The example shop page in a real headless browser against a running worker."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import redis

from stream.settings import Settings
from tests.integration.browser import browser  # noqa: F401  (fixture)
from tests.integration.helpers import wait_for
from tests.integration.test_serving import seeded_worker

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


def redis_segment(settings: Settings, cid: str) -> str | None:
    r = redis.Redis.from_url(settings.redis_url)
    try:
        v = r.hget(f"{settings.redis_prefix}customer:{{{cid}}}", "segment")
        return v.decode() if isinstance(v, bytes) else None
    finally:
        r.close()


async def shown_segment(page: Any) -> str:
    return str(await page.get_attribute("[data-testid=segment]", "data-segment") or "")


async def shows_what_redis_holds(page: Any, settings: Settings, cid: str) -> None:
    """The page re-reads every 2 s: a write right after its read (the page's two events in
    two batches) shows at its next read."""
    async def agree() -> bool:
        return await shown_segment(page) == redis_segment(settings, cid)
    await wait_for(agree, 10, "the page to show the segment Redis holds",
                   detail=lambda: f"{redis_segment(settings, cid)} in Redis")


async def test_shop_page_shows_and_follows_the_segment(
        settings: Settings, tmp_path: Path, browser: Any) -> None:  # noqa: F811
    # a write key is set, as in `segmenter demo`: the page's clicks go through the shop's
    # server (its session), so the page needs no key and keeps working
    settings = dataclasses.replace(settings, write_key="shop-e2e-write-key")
    worker, _ = await seeded_worker(settings, tmp_path, customers=600)
    try:
        page = await browser.new_page()
        cid = "shopper-e2e-1"
        await page.goto(f"http://127.0.0.1:{settings.web_port}/demo/shop?customer={cid}")
        # The page sent session_start + page_view at load; the worker assigns a segment.
        await page.wait_for_function(
            "document.querySelector('[data-testid=segment]').dataset.segment", timeout=30_000)
        await shows_what_redis_holds(page, settings, cid)
        first = await shown_segment(page)
        assert await page.inner_text("[data-testid=banner]")
        # Behave very differently: buy again and again until the segment moves.
        deadline = time.monotonic() + 60
        clicks = 0
        while await shown_segment(page) == first and time.monotonic() < deadline:
            await page.locator("[data-action=purchase]").first.click()
            clicks += 1
            await page.wait_for_timeout(150)
        second = await shown_segment(page)
        assert second != first, f"segment did not change after {clicks} purchases"
        await shows_what_redis_holds(page, settings, cid)
        assert "shop-e2e-write-key" not in await page.content()
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "shop.png"), full_page=True)
        await page.close()
    finally:
        assert worker.stop() == 0, worker.log()
