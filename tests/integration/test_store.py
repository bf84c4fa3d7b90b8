"""RedisStore against real Redis: writes read back, the warm-start scan's partition filter,
the scripts' round trips and reloading, and model publication."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest
import redis.asyncio as aioredis

from models.core import Assignment
from models.state import CustomerState
from stream.embedded import start_redis
from stream.partition_index import scan_states
from stream.redis_io import RedisStore, connect
from stream.settings import Settings

NOW = 1767225600000


@pytest.fixture
async def own() -> AsyncIterator[aioredis.Redis]:
    """A client on a Redis server of this test's own: it reads the server's command counts
    and flushes its scripts."""
    server = start_redis()
    client = connect(server.url)
    try:
        yield client
    finally:
        await client.aclose()
        server.stop()


async def script_calls(r: aioredis.Redis) -> dict[str, int]:
    """Calls of every scripting command since the last ``CONFIG RESETSTAT``."""
    stats = await r.info("commandstats")
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()
            if "eval" in k or "script" in k}


def assignment(cid: str, partition: int, segment: str) -> Assignment:
    st = CustomerState(cid)
    st.partition, st.offset, st.last_ts = partition, 7, 1767225600000
    return Assignment(customer_id=cid, segment=segment, segment_name=f"name {segment}",
                      confidence=0.5, model_version=3, event_id=f"e-{cid}",
                      event_ts=st.last_ts, reason="event", explanation="", partition=partition,
                      offset=7, state=st.to_bytes())


async def test_scan_returns_only_the_asked_partitions_with_their_segments(
        settings: Settings) -> None:
    client = connect(settings.redis_url, cluster=settings.redis_cluster)
    store = RedisStore(client, settings.redis_prefix, settings.stream_maxlen)
    try:
        writes = [assignment(f"c{i}/{{x}}", i % 4, f"s{i % 3}") for i in range(40)]
        await store.write(writes, 1767225600000)
        cursor, found = 0, []
        while True:
            cursor, states, _ = await scan_states(store, cursor, {1, 3}, count=7)
            found.extend(states)
            if cursor == 0:
                break
        assert sorted(s.customer_id for s in found) == sorted(
            a.customer_id for a in writes if a.partition in (1, 3))
        by_id = {a.customer_id: a for a in writes}
        for s in found:
            assert (s.segment, s.model_version, s.confidence, s.partition) == (
                by_id[s.customer_id].segment, 3, 0.5, by_id[s.customer_id].partition)
        loaded = await store.load_states({"c0/{x}", "c1/{x}", "unknown"})
        assert sorted(loaded) == ["c0/{x}", "c1/{x}"] and loaded["c0/{x}"].segment == "s0"
    finally:
        await client.aclose()


async def test_a_batch_is_one_pipeline_of_evalsha_and_survives_a_script_flush(
        own: aioredis.Redis) -> None:
    store = RedisStore(own, "t:", 1000)
    ids = [f"c{i}" for i in range(50)]
    changes, fenced = await store.write([assignment(c, 1, "s0") for c in ids], NOW)
    assert (len(changes), fenced) == (50, 0)  # first use: NOSCRIPT, loaded, sent again

    await own.config_resetstat()
    changes, fenced = await store.write([assignment(c, 1, "s1") for c in ids], NOW)
    moves = [orjson.loads(m) for m in changes]
    assert fenced == 0 and sorted(m["customer_id"] for m in moves) == sorted(ids)
    assert {(m["from"], m["to"]) for m in moves} == {("s0", "s1")}
    # one pipeline of EVALSHA: no SCRIPT EXISTS or LOAD round trip, no EVAL of the source
    assert await script_calls(own) == {"evalsha": 50}

    await own.script_flush()  # what a restarted Redis or a failover does
    await own.config_resetstat()
    changes, fenced = await store.write([assignment(c, 1, "s0") for c in ids], NOW)
    assert (len(changes), fenced) == (50, 0)
    # every call answered NOSCRIPT once, the script was loaded once, every call sent again
    assert await script_calls(own) == {"evalsha": 100, "script|load": 1}
    assert await store.sizes() == {"s0": 50, "s1": 0}
    assert (await store.customer("c7") or {})["segment"] == "s0"

    await own.script_flush()
    assert await store.erase(ids[:10] + ["unknown"], NOW, 3) == 10
    assert await store.sizes() == {"s0": 40, "s1": 0}
    assert await store.customers(ids[:2]) == [None, None]


async def test_publish_model_stores_a_version_once_and_never_an_older_one(
        own: aioredis.Redis) -> None:
    store = RedisStore(own, "t:", 1000)
    k = store.keys
    profiles = {"s0": {"id": "s0", "name": "Großkunden", "criterion": {"value": 0.8}},
                "s1": {"id": "s1", "name": "One", "criterion": {"value": float("inf")}}}
    born = {"event": "born", "segment": "s1", "model_version": 2, "at": NOW}
    assert await store.publish_model(2, '{"version": 2}', profiles, [born])
    assert (await own.get(k.model), await own.get(k.model_version)) == (b'{"version": 2}', b"2")
    # sizes are live; a non-finite number is stored as null (valid JSON for every reader)
    assert await store.profiles() == {
        "s0": {**profiles["s0"], "size": 0},
        "s1": {"id": "s1", "name": "One", "criterion": {"value": None}, "size": 0}}
    assert [orjson.loads(f[b"lifecycle"]) for _, f in await own.xrange(k.lifecycle)] == [born]

    for stale in (2, 1):  # the same version again or an older one: nothing is written
        assert not await store.publish_model(stale, "old", {"s9": {"id": "s9"}}, [born])
    assert await own.get(k.model) == b'{"version": 2}'
    assert sorted(await store.profiles()) == ["s0", "s1"]
    assert await own.xlen(k.lifecycle) == 1

    await own.script_flush()  # the direct call reloads its script by itself
    assert await store.publish_model(3, '{"version": 3}', {}, [])
    assert await own.get(k.model_version) == b"3"


async def test_profiles_written_by_pythons_json_still_load(own: aioredis.Redis) -> None:
    store = RedisStore(own, "t:", 1000)
    await own.hset(store.keys.segments, "s0",
                   b'{"id": "s0", "criterion": {"value": Infinity, "by_count": {"1": NaN}}}')
    assert await store.profiles() == {
        "s0": {"id": "s0", "criterion": {"value": None, "by_count": {"1": None}}, "size": 0}}


async def test_erasure_forgets_the_shops_log_in_claims_of_the_id(settings: Settings) -> None:
    client = connect(settings.redis_url, cluster=settings.redis_cluster)
    store = RedisStore(client, settings.redis_prefix, settings.stream_maxlen)
    k = store.keys
    try:
        await store.write([assignment("claimed-1", 0, "s1"), assignment("kept-1", 1, "s1")],
                          1767225600000)
        # as the shop's log-in leaves them: each id claimed, naming the other id
        for a, b in (("claimed-1", "anon-claimed-1"), ("kept-1", "anon-kept-1")):
            await client.set(k.shop_claim(a), b, ex=86_400)
            await client.set(k.shop_claim(b), a, ex=86_400)
        assert await store.erase(["claimed-1", "anon-claimed-1"], 1767225600000, 3) == 1
        assert await client.exists(k.shop_claim("claimed-1"), k.shop_claim("anon-claimed-1")) == 0
        assert await client.get(k.shop_claim("kept-1")) == b"anon-kept-1"
        assert await client.exists(k.customer("claimed-1"), k.state("claimed-1")) == 0
    finally:
        await client.aclose()
