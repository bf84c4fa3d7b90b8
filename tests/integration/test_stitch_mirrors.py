"""A linked anonymous id's mirror follows every write of its customer, not only the writes
an event makes (README "Identity stitching", step 5): the audience pass's membership writes
and the RFM names that move with the population reach the mirror in the same script, so a
page reading the anonymous id sees the customer's current audiences and RFM segment."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from stream.keys import Keys
from stream.rfm_io import _RENAME
from stream.settings import Settings
from tests.integration.helpers import WorkerProcess, produce, wait_for
from tests.integration.test_audiences import ADMIN
from tests.integration.test_serving import request
from tests.integration.test_stitching import ANON, CUST, journey, message, with_model

BUYERS = {"name": "Bought twice", "where": {"trait": "orders", "op": ">=", "value": 2}}


async def _same(r: aioredis.Redis, keys: Keys, field: str) -> bool:
    c, a = await r.hget(keys.customer(CUST), field), await r.hget(keys.customer(ANON), field)
    return c is not None and c == a


async def test_the_mirror_follows_the_audience_pass_and_rfm_renames(
        settings: Settings, tmp_path: Path, r: aioredis.Redis) -> None:
    if settings.redis_cluster:
        pytest.skip("mirrors of linked anonymous ids are not built on Redis Cluster yet")
    settings, keys = await with_model(settings, r, api_token="admin-t")
    before, identify, _ = journey()
    await produce(settings, [message(e) for e in [*before, identify]])
    worker = WorkerProcess(settings, tmp_path)
    try:
        await worker.wait_healthy()

        async def merged() -> bool:
            return (await r.hget(keys.customer(ANON), "customer_id") == CUST.encode()
                    and await r.hget(keys.customer(CUST), "orders") == b"3")
        await wait_for(merged, 90, "the merge, and the anonymous id's mirror")
        assert orjson.loads(await r.hget(keys.customer(ANON), "audiences") or b"[]") == []

        # a new audience reaches the customer through the pass over stored customers (no
        # event of theirs): the mirror has the same membership
        status, _, _ = request(worker, "PUT", "/audiences/a-buyers", BUYERS, headers=ADMIN)
        assert status == 201

        async def entered() -> bool:
            raw = await r.hget(keys.customer(CUST), "audiences")
            return raw is not None and orjson.loads(raw) == ["a-buyers"]
        await wait_for(entered, 60, "the customer to enter the audience",
                       detail=lambda: str(request(worker, "GET", "/audiences/a-buyers",
                                                  headers=ADMIN)[2]))
        await wait_for(lambda: _same(r, keys, "audiences"), 10,
                       "the mirror to have the customer's audiences")
        status, _, body = request(worker, "GET", f"/customers/{ANON}", headers=ADMIN)
        assert status == 200 and body["audiences"] == ["a-buyers"], body

        # an RFM name moved with the population (the worker's rename script, as its RFM
        # tick runs it): the mirror has the new name too
        orders, last = await r.hmget(keys.customer(CUST), ["orders", "last_purchase"])
        rename = r.register_script(_RENAME)
        assert await rename(keys=[keys.customer(CUST)],
                            args=[orders, last, "At Risk", "", CUST]) == 1
        assert await r.hget(keys.customer(CUST), "rfm") == b"At Risk"
        assert await r.hget(keys.customer(ANON), "rfm") == b"At Risk"
        # a rename the customer's newer purchase overtook writes nothing, mirror included
        assert await rename(keys=[keys.customer(CUST)],
                            args=[orders, b"0", "Lost", "", CUST]) == 0
        assert await r.hget(keys.customer(ANON), "rfm") == b"At Risk"
        mirror = await r.hgetall(keys.customer(ANON))
        assert mirror.pop(b"customer_id") == CUST.encode()
        assert mirror == await r.hgetall(keys.customer(CUST))
    finally:
        assert worker.stop() == 0, worker.log()
