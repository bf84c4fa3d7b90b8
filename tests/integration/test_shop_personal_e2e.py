"""The demo shop personalises on an audience and traits as well as the segment, read on the
shop's server for the signed-in visitor only (headless Chromium against a real worker)."""

from __future__ import annotations

import dataclasses
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from stream.redis_io import connect
from stream.settings import Settings
from tests.integration.browser import browser  # noqa: F401  (fixture)
from tests.integration.test_serving import seeded_worker

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
REPEAT = {"name": "Repeat buyers", "where": {
    "event": "purchase", "within_days": 30, "count": {"op": ">=", "value": 2}}}


def status_of(url: str, cookie: str = "") -> int:
    req = urllib.request.Request(url, headers={"Cookie": cookie} if cookie else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


async def test_shop_personalises_on_audience_and_traits_for_its_own_visitor_only(
        settings: Settings, tmp_path: Path, browser: Any) -> None:  # noqa: F811
    path = tmp_path / "audiences.json"
    path.write_text(orjson.dumps({"a-repeat": REPEAT}).decode())
    settings = dataclasses.replace(settings, read_token="read-secret-t",
                                   audiences_file=str(path))
    worker, _ = await seeded_worker(settings, tmp_path, customers=600)
    r = connect(settings.redis_url, cluster=settings.redis_cluster)
    base = f"http://127.0.0.1:{settings.web_port}"
    cid = "shopper-personal-1"
    try:
        mine = await browser.new_context()
        page = await mine.new_page()
        await page.goto(f"{base}/demo/shop?customer={cid}")
        assert await page.get_attribute("body", "data-signed-in") == "true"
        await page.wait_for_function(
            "document.querySelector('[data-testid=segment]').dataset.segment", timeout=30_000)
        await page.wait_for_function(
            "document.querySelector('[data-testid=hello]').dataset.orders === '0'",
            timeout=10_000)
        assert await page.inner_text("[data-testid=hello]") == "Your first order ships free."
        assert await page.is_hidden("[data-testid=audience-banner]")
        # the session cookie is HttpOnly: no script on the page can read it
        assert await page.evaluate("document.cookie") == ""
        category = await page.get_attribute("[data-testid=picks] .card", "data-category")
        books = page.locator("[data-testid=picks] .card [data-action=purchase]").first
        await books.click()
        await page.wait_for_function(
            "document.querySelector('[data-testid=hello]').dataset.orders === '1'",
            timeout=20_000)
        await books.click()
        await page.wait_for_function(
            "document.querySelector('[data-testid=audience-banner]').dataset.audience "
            "=== 'a-repeat'", timeout=20_000)
        await page.wait_for_function(
            "document.querySelector('[data-testid=hello]').dataset.orders === '2'",
            timeout=20_000)
        h = {k.decode(): v.decode() for k, v in
             (await r.hgetall(f"{settings.redis_prefix}customer:{{{cid}}}")).items()}
        assert h["orders"] == "2" and "a-repeat" in orjson.loads(h["audiences"])
        favourite = orjson.loads(h["categories"])[0]
        assert favourite == category
        hello = await page.inner_text("[data-testid=hello]")
        assert hello.startswith(f"Welcome back! 2 orders so far · more {category} for you first")
        banner = await page.inner_text("[data-testid=audience-banner]")
        assert banner == "Repeat buyers: members get free express shipping this week"
        # the picks lead with the favourite category
        assert await page.get_attribute("[data-testid=picks] .card",
                                         "data-category") == category
        cookies = await mine.cookies()
        session = [c for c in cookies if c["name"] == "segmenter_shop"]
        assert session and session[0]["httpOnly"]
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "shop-personal.png"), full_page=True)

        # Anyone else: the URL of an existing customer shows their public segment only
        other = await browser.new_context()
        spy = await other.new_page()
        personal_reads: list[str] = []
        spy.on("request", lambda req: personal_reads.append(req.url)
               if "/demo/shop/me" in req.url or "/customers/" in req.url and
               not req.url.endswith("/segment") else None)
        await spy.goto(f"{base}/demo/shop?customer={cid}")
        assert await spy.get_attribute("body", "data-signed-in") == "false"
        await spy.wait_for_function("document.body.dataset.updated", timeout=20_000)
        assert await spy.inner_text("[data-testid=hello]") == "Sign in to see your own offers."
        assert await spy.is_hidden("[data-testid=audience-banner]")
        assert personal_reads == [] and await other.cookies() == []
        text = await spy.content()
        assert "read-secret-t" not in text and "Repeat buyers" not in text
        # the server-side read answers only a session this shop signed
        assert status_of(f"{base}/demo/shop/me") == 401
        forged = session[0]["value"][:-1] + ("0" if session[0]["value"][-1] != "0" else "1")
        assert status_of(f"{base}/demo/shop/me", f"segmenter_shop={forged}") == 401
        assert status_of(f"{base}/demo/shop/me",
                         f"segmenter_shop={session[0]['value']}") == 200
        await other.close()
        await mine.close()
    finally:
        await r.aclose()
        assert worker.stop() == 0, worker.log()
