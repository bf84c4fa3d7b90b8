"""Live traits and RFM segments on the real broker and Redis (contract §2.1, §2.2, §4):
``GET /customers/<id>`` with its token, the one-round-trip hash a website reads, the
population of buyers in ``seg:rfm``, re-sends that change nothing, erasure."""

from __future__ import annotations

import dataclasses
import urllib.parse
from pathlib import Path

import orjson
import redis.asyncio as aioredis

from models.rfm import GRID
from stream.settings import Settings
from tests.integration.helpers import produce, wait_for
from tests.integration.layout import counts
from tests.integration.test_pipeline import lag_is_zero
from tests.integration.test_serving import request, seeded_worker

T0 = 1767225600000 + 7 * 86_400_000  # after the seeded shoppers' six days
NAMES = {n for row in GRID.values() for n in row}


Message = tuple[bytes | None, bytes | None]


def _events(cid: str) -> list[Message]:
    def ev(n: int, etype: str, **extra: object) -> Message:
        return cid.encode(), orjson.dumps({"event_id": f"{cid}-{n}", "customer_id": cid,
                                           "type": etype, "timestamp": T0 + n * 60_000,
                                           **extra})
    return [
        ev(0, "page_view", properties={"device": "tablet", "channel": "email",
                                       "country": "AT", "region": "Tirol",
                                       "category": "books"}),
        ev(1, "identify", traits={"age": 41, "gender": "f", "interests": ["jazz"]}),
        ev(2, "purchase", properties={"amount": 20.5, "category": "books"}),
        ev(3, "purchase", properties={"amount": 30.25, "category": "music"}),
        ev(4, "unknown_kind"),  # accepted, counted, otherwise ignored: not an applied event
        ev(5, "purchase", properties={"amount": 100.0, "category": "books",
                                      "device": "mobile"}),
    ]


def _text(x: bytes | str) -> str:
    return x.decode() if isinstance(x, bytes) else x


async def _population(r: aioredis.Redis, prefix: str) -> dict[str, int]:
    return await counts(r, prefix, "rfm")


async def _buyers_with_key(r: aioredis.Redis, prefix: str) -> int:
    n = 0
    async for key in r.scan_iter(match=f"{prefix}customer:*", count=1000):
        n += bool(await r.hexists(key, "last_purchase"))
    return n


async def test_traits_rfm_and_the_population_of_buyers(
        settings: Settings, tmp_path: Path, r: aioredis.Redis) -> None:
    settings = dataclasses.replace(settings, api_token="admin-t", read_token="read-a,read-b")
    worker, _ = await seeded_worker(settings, tmp_path)
    prefix, cid = settings.redis_prefix, "ü-traits/1"
    path = f"/customers/{urllib.parse.quote(cid, safe='')}"
    try:
        await produce(settings, _events(cid))
        await wait_for(lambda: lag_is_zero(settings), 60, "the customer's events")

        assert request(worker, "GET", path)[0] == 401
        assert request(worker, "GET", path, headers={"Authorization": "Bearer no"})[0] == 401
        status, _, body = request(worker, "GET", path,
                                  headers={"Authorization": "Bearer read-b"})
        assert status == 200, body
        t = body["traits"]
        assert (t["orders"], t["revenue"], t["events"]) == (3, 150.75, 5)
        assert (t["first_seen"], t["last_seen"], t["last_purchase"]) == (
            T0, T0 + 5 * 60_000, T0 + 5 * 60_000)
        assert 4.9 < t["activity"] <= 5  # five events, minutes before the latest event time
        assert t["categories"][0] == "books" and set(t["categories"]) == {"books", "music"}
        assert (t["device"], t["channel"], t["country"], t["region"]) == (
            "mobile", "email", "AT", "Tirol")
        assert (t["age"], t["gender"], t["income"]) == (41, "f", None)
        rfm = body["rfm"]
        assert {rfm["r"], rfm["f"], rfm["m"]} <= {1, 2, 3, 4, 5}
        assert rfm["segment"] in NAMES and rfm["r"] == 5  # the latest buyer of all
        assert body["segment"].startswith("s") and body["audiences"] == []
        admin = request(worker, "GET", path, headers={"Authorization": "Bearer admin-t"})
        assert admin[0] == 200 and admin[2]["traits"] == t

        # what a website reads in one round trip: HGETALL of the customer hash
        h = {_text(k): _text(v) for k, v in
             (await r.hgetall(f"{prefix}customer:{{{cid}}}")).items()}
        assert (h["orders"], h["revenue"], h["last_purchase"], h["device"]) == (
            "3", "150.75", str(T0 + 5 * 60_000), "mobile")
        assert h["segment"] == body["segment"] and "traits" not in h
        await wait_for(lambda: _rfm_field_is(r, prefix, cid, rfm["segment"]), 30,
                       "the hash's rfm name to match the API's")
        # the lookup a browser may make gives the public segment fields only; with the
        # read token (either of its two values) every segment field, never a trait
        seg = request(worker, "GET", f"{path}/segment")[2]
        assert set(seg) == {"customer_id", "segment", "segment_name", "model_version",
                            "updated_at", "confidence"}, seg
        seg = request(worker, "GET", f"{path}/segment",
                      headers={"Authorization": "Bearer read-b"})[2]
        assert not {"orders", "age", "last_purchase"} & set(seg) and seg["rfm"] in NAMES

        # the population holds every buyer once
        pop = await _population(r, prefix)
        buyers = await _buyers_with_key(r, prefix)
        assert buyers > 100
        for dim in "rfm":
            assert sum(v for k, v in pop.items() if k[0] == dim) == buyers

        # re-sent: nothing moves
        before = await r.hgetall(f"{prefix}customer:{{{cid}}}")
        await produce(settings, _events(cid))
        await wait_for(lambda: lag_is_zero(settings), 60, "the re-sent events")
        assert await r.hgetall(f"{prefix}customer:{{{cid}}}") == before
        assert await _population(r, prefix) == pop

        # erased: out of the population
        status, _, _ = request(worker, "DELETE", path,
                               headers={"Authorization": "Bearer admin-t"})
        assert status == 200
        after = await _population(r, prefix)
        assert sum(v for k, v in after.items() if k[0] == "f") == buyers - 1
        assert request(worker, "GET", path, headers={"Authorization": "Bearer read-a"})[0] \
            == 404
    finally:
        worker.stop()


async def _rfm_field_is(r: aioredis.Redis, prefix: str, cid: str, name: str) -> bool:
    return await r.hget(f"{prefix}customer:{{{cid}}}", "rfm") == name.encode()
