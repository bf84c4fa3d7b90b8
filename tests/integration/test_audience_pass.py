"""Audiences evaluated over every stored customer (issue #18), on the real broker and
Redis: customers evicted from the worker's cache and customers written by a worker that has
stopped enter a new audience, each once, with progress for the current definitions only;
an evicted customer's window membership ends as event time passes; a membership write
loses to a newer write of the customer (fenced on the state)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import orjson
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter

from models.audiences import parse_audience
from models.config import SegmenterConfig
from models.core import Segmenter
from models.records import Record
from stream.audience_pass import AudiencePass, _evaluated
from stream.embedded import free_port
from stream.health import Health
from stream.kafka_io import ensure_topics
from stream.redis_io import RedisStore
from stream.settings import Settings
from tests.integration.helpers import WorkerProcess, produce, wait_for
from tests.integration.test_audiences import ADMIN, T0, _keys, _size, _stream, _worker, ev
from tests.integration.test_pipeline import lag_is_zero
from tests.integration.test_serving import request

AT = {"name": "In Austria", "where": {"trait": "country", "op": "=", "value": "AT"}}


async def test_a_new_audience_reaches_stored_customers_not_only_cached_ones(
        settings: Settings, tmp_path: Path, r: aioredis.Redis) -> None:
    # a cache of 5: nearly every customer is evicted once written
    settings = dataclasses.replace(settings, api_token="admin-t", state_cache=5)
    await ensure_topics(settings)
    prefix = settings.redis_prefix
    ids = [f"c-st-{i}" for i in range(60)]
    austria = {c for i, c in enumerate(ids) if i % 3 == 0}
    batch = [ev(c, 0, "page_view", country="AT" if c in austria else "FR") for c in ids]
    a = WorkerProcess(settings, tmp_path, "a")
    try:  # the first half is written by a worker that then stops
        await a.wait_healthy()
        await produce(settings, batch[:30])
        await wait_for(lambda: lag_is_zero(settings), 60, "worker a's customers")
    finally:
        a.stop()
    b = WorkerProcess(dataclasses.replace(settings, web_port=free_port()), tmp_path, "b")
    try:
        await b.wait_healthy()
        await produce(settings, batch[30:])
        await wait_for(lambda: lag_is_zero(settings), 60, "worker b's customers")

        async def evicted() -> bool:  # the other 55 are in Redis only
            text = b.metrics_text().split("\nsegmenter_cached_customers ")[1]
            return float(text.split()[0]) <= 5
        await wait_for(evicted, 20, "the cache to shrink to its bound")

        status, _, body = request(b, "PUT", "/audiences/a-at", AT, headers=ADMIN)
        version = int(await r.get(_keys(r, prefix).audiences_version))
        assert status == 201 and body["evaluation"]["version"] == version  # not an older one
        assert body["windows"] == []  # no event condition
        await wait_for(lambda: _size(r, prefix, "a-at", len(austria)), 60,
                       "every stored Austrian to enter")

        async def finished() -> bool:
            e = request(b, "GET", "/audiences/a-at")[2]["evaluation"]
            return bool(e["version"] == version and e["finished"] and e["done"] == e["total"]
                        == len(ids))
        await wait_for(finished, 30, "the progress over all 60 stored customers")
        for cid in ids:
            raw = await r.hget(f"{prefix}customer:{{{cid}}}", "audiences")
            assert orjson.loads(raw) == (["a-at"] if cid in austria else []), cid
        entered = [(m["customer_id"], m["change"], m["reason"]) for m in await _stream(r, prefix)]
        assert sorted(entered) == sorted((c, "entered", "definition") for c in austria)

        # changed: every member leaves once, though none is cached
        de = {"name": "In Germany", "where": {"trait": "country", "op": "=", "value": "DE"}}
        status, _, body = request(b, "PUT", "/audiences/a-at", de, headers=ADMIN)
        assert status == 200 and body["evaluation"]["version"] == version + 1
        await wait_for(lambda: _size(r, prefix, "a-at", 0), 60, "the members to leave")
        exits = [m["customer_id"] for m in await _stream(r, prefix) if m["change"] == "exited"]
        assert sorted(exits) == sorted(austria)
    finally:
        b.stop()


async def test_a_membership_write_loses_to_a_newer_write_of_the_customer(
        settings: Settings, r: aioredis.Redis) -> None:
    store = RedisStore(r, settings.redis_prefix, 1000)
    prefix = settings.redis_prefix
    core = Segmenter(SegmenterConfig(warmup=1000))
    core.apply(core.parse([Record("events", 0, i, b"c-f", orjson.dumps({
        "event_id": f"f-{i}", "customer_id": "c-f", "type": "page_view", "timestamp": T0 + i,
        "properties": {"country": "AT"}})) for i in range(2)]), {})
    await store.write(core.drain(), 0)  # stored at offset 1
    await r.set(store.keys.audiences_version, 1)
    core.assigner.set_audiences(1, [parse_audience("a-at", AT)])
    (st,) = await store.read_states(["c-f"])
    stale = (await store.read_states(["c-f"]))[0]
    stale.offset = 0  # what a pass read before the event at offset 1 was written
    errors = Counter("t_errors", "t", registry=CollectorRegistry())
    p = AudiencePass(store, core, asyncio.Lock(), lambda: {0}, lambda: asyncio.sleep(0),
                     1000, Health(), errors)
    assert await p._write([_evaluated(stale, '["a-at"]')], 1) == ["c-f"]  # evaluated again
    assert await r.hget(f"{prefix}customer:{{c-f}}", "audiences") is None
    assert await _stream(r, prefix) == []
    assert await p._write([_evaluated(st, '["a-at"]')], 1) == []
    assert await r.hget(f"{prefix}customer:{{c-f}}", "audiences") == b'["a-at"]'
    assert [(m["customer_id"], m["change"], m["reason"]) for m in await _stream(r, prefix)] \
        == [("c-f", "entered", "definition")]


async def test_a_window_membership_of_an_evicted_customer_ends_as_event_time_passes(
        settings: Settings, tmp_path: Path, r: aioredis.Redis) -> None:
    bought = {"name": "Bought in 30 days", "where": {
        "event": "purchase", "within_days": 30, "count": {"op": ">=", "value": 1}}}
    settings = dataclasses.replace(settings, state_cache=5)
    settings, worker = await _worker(settings, tmp_path, {"a-bought": bought})
    prefix, cid = settings.redis_prefix, "c-bought"
    try:
        await produce(settings, [ev(cid, 0, "purchase", amount=20.0)])
        await wait_for(lambda: _size(r, prefix, "a-bought", 1), 60, "the buyer to enter")
        # ten customers active after the buyer: the buyer is evicted (least recently active)
        await produce(settings, [ev(f"c-other-{i}", 1, "page_view") for i in range(10)])
        await wait_for(lambda: lag_is_zero(settings), 60, "the others")

        async def evicted() -> bool:
            text = worker.metrics_text().split("\nsegmenter_cached_customers ")[1]
            return float(text.split()[0]) <= 5
        await wait_for(evicted, 20, "the cache to shrink to its bound")

        # day 30 of event time: the purchase (day 0) has left the window; no event of the
        # buyer's, and no worker holds the buyer in memory
        await produce(settings, [ev("c-later", 0, "page_view", day=30)])
        await wait_for(lambda: _size(r, prefix, "a-bought", 0), 60, "the membership to end")
        last = [m for m in await _stream(r, prefix) if m["customer_id"] == cid]
        assert [(m["change"], m["reason"], m["event_id"]) for m in last] == [
            ("entered", "event", f"{cid}-0"), ("exited", "time", None)]
        assert orjson.loads(await r.hget(f"{prefix}customer:{{{cid}}}", "audiences")) == []
    finally:
        worker.stop()
