"""The dashboard's RFM grid in a real headless browser: the 5x5 recency/frequency map with
the buyers per cell, checked against the buyers' own traits in Redis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from models.rfm import GRID, Population, bucket_key
from stream.redis_io import connect
from stream.settings import Settings
from tests.integration.browser import browser  # noqa: F401  (fixture)
from tests.integration.helpers import wait_for
from tests.integration.test_serving import seeded_worker

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


async def expected_grid(r: aioredis.Redis, prefix: str) -> dict[tuple[int, int], int]:
    """Buyers per (recency, frequency) score, from every customer hash's own traits
    (``last_purchase``, ``orders``, ``revenue``) scored against their quintiles."""
    keys = [k async for k in r.scan_iter(match=f"{prefix}customer:*", count=1000)]
    buyers = []
    for k in keys:
        lp, orders, revenue = await r.hmget(k, "last_purchase", "orders", "revenue")
        if lp and orders and int(orders) > 0:
            buyers.append(bucket_key(int(lp), int(orders), float(revenue or 0)))
    pop = Population()
    for key in buyers:
        pop.add(key)
    q = pop.quintiles()
    cells: dict[tuple[int, int], int] = {}
    for key in buyers:
        rs, fs, _ = q.scores(key)
        cells[rs, fs] = cells.get((rs, fs), 0) + 1
    return cells


async def shown_grid(page: Any) -> dict[tuple[int, int], tuple[int, str]]:
    cells = await page.eval_on_selector_all(
        "[data-testid=rfm-grid] td.cell",
        "cs => cs.map(c => [c.dataset.r, c.dataset.f, c.dataset.value, c.dataset.segment, "
        "c.textContent])")
    out = {}
    for r, f, n, seg, text in cells:
        assert text.endswith(seg)  # the cell is labelled with its segment's name
        out[int(r), int(f)] = (int(n), seg)
    return out


async def test_dashboard_rfm_grid_counts_the_buyers(settings: Settings, tmp_path: Path,
                                                    browser: Any) -> None:  # noqa: F811
    worker, _ = await seeded_worker(settings, tmp_path, customers=500)
    r = connect(settings.redis_url, cluster=settings.redis_cluster)
    try:
        expected = await expected_grid(r, settings.redis_prefix)
        buyers = sum(expected.values())
        assert buyers > 100 and len(expected) >= 10  # a real spread over the map
        page = await browser.new_page(viewport={"width": 1400, "height": 1400})
        await page.goto(f"http://127.0.0.1:{settings.web_port}/")
        await page.wait_for_function(
            "document.querySelectorAll('[data-testid=rfm-grid] td.cell').length === 25",
            timeout=20_000)

        async def matches() -> bool:
            got = await shown_grid(page)
            return {k: n for k, (n, _) in got.items() if n} == expected
        await wait_for(matches, 20, "the page's grid to match the buyers' traits",
                       detail=lambda: f"expected {expected}")
        got = await shown_grid(page)
        assert len(got) == 25
        assert all(seg == GRID[rs][fs - 1] for (rs, fs), (_, seg) in got.items())
        # rows from recency 5 down to 1, columns frequency 1 to 5: Champions top right
        first = await page.eval_on_selector(
            "[data-testid=rfm-grid] tbody tr td.cell", "c => [c.dataset.r, c.dataset.f]")
        assert first == ["5", "1"]
        assert await page.inner_text("[data-testid=rfm-buyers]") == f"({buyers:,} buyers)"
        totals = await page.eval_on_selector_all(
            "[data-testid=rfm-segments] tbody tr",
            "rs => rs.map(r => [r.dataset.segment, r.querySelector('.n').dataset.value])")
        by_name: dict[str, int] = {}
        for (rs, fs), n in expected.items():
            by_name[GRID[rs][fs - 1]] = by_name.get(GRID[rs][fs - 1], 0) + n
        assert {name: int(n) for name, n in totals if int(n)} == by_name
        ARTIFACTS.mkdir(exist_ok=True)
        await page.locator("[data-testid=rfm-grid]").screenshot(
            path=str(ARTIFACTS / "rfm-grid.png"))
        await page.close()
    finally:
        await r.aclose()
        assert worker.stop() == 0, worker.log()
