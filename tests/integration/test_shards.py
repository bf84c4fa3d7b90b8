"""The sharded layout (``stream.shards``) on a real three-primary Valkey cluster: no global
key on the per-event path, each move of the aggregates applied exactly once even when the
writer stops between its two steps, one customer's changes in order in one stream."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from models.core import Assignment
from models.state import CustomerState
from stream.errors import RetriableError
from stream.redis_io import RedisStore, connect
from stream.shards import Shards, partitions, streams, sum_hashes
from tests.integration.redis_cluster import redis_cluster

NOW = 1767225600000


@pytest.fixture(scope="module")
def cluster_url() -> Iterator[str]:
    with redis_cluster(3) as url:
        yield url


@pytest.fixture
async def store(cluster_url: str) -> AsyncIterator[RedisStore]:
    client = connect(cluster_url, cluster=True)
    try:
        yield RedisStore(client, f"t{uuid.uuid4().hex[:8]}:", 1000)
    finally:
        await client.aclose()


def assignment(cid: str, partition: int, offset: int, segment: str) -> Assignment:
    st = CustomerState(cid)
    st.partition, st.offset, st.last_ts = partition, offset, NOW
    return Assignment(customer_id=cid, segment=segment, segment_name=f"name {segment}",
                      confidence=0.5, model_version=3, event_id=f"e-{cid}-{offset}",
                      event_ts=NOW, reason="event", explanation="", partition=partition,
                      offset=offset, state=st.to_bytes())


async def changes_of(store: RedisStore) -> list[dict[str, Any]]:
    out = []
    for name in await streams(store.r, store.keys, "changes", store.keys.changes):
        out += [orjson.loads(f[b"change"]) for _, f in await store.r.xrange(name)]
    return out


async def sizes(store: RedisStore) -> dict[str, int]:
    return {s: n for s, n in (await store.sizes()).items() if n}


class Interrupted(ConnectionError):
    """The writer stops after the customer scripts, before the shards (a crash)."""


async def interrupted(store: RedisStore, writes: list[Assignment]) -> None:
    assert store.shards is not None
    shards: Shards = store.shards
    real = shards.apply

    async def crash(*_: Any) -> int:
        raise Interrupted("stopped between the steps")

    shards.apply = crash  # type: ignore[method-assign]
    try:
        with pytest.raises(RetriableError):
            await store.write(writes, NOW)
    finally:
        shards.apply = real  # type: ignore[method-assign]


async def test_no_global_key_and_sizes_and_changes_per_partition(store: RedisStore) -> None:
    k = store.keys
    await store.write([assignment(f"c{i}", i % 4, 1, "s0") for i in range(40)], NOW)
    assert await sizes(store) == {"s0": 40}
    assert len(await changes_of(store)) == 40
    assert await partitions(store.r, k) == [0, 1, 2, 3]
    assert not await store.r.exists(k.sizes, k.changes, k.rfm, k.audience_sizes)
    for p in range(4):  # each partition's shard holds its own customers
        assert int(await store.r.hget(k.shard("sizes", p), "s0")) == 10
        assert await store.r.xlen(k.shard("changes", p)) == 10
        assert await store.r.scard(k.partition(p)) == 10
    # the shards of different partitions live on different primaries (no hot shard)
    slots = {key_slot(k.shard("changes", p).encode()) for p in range(4)}
    nodes = {store.r.get_node_from_key(k.shard("changes", p)).name for p in range(4)}  # type: ignore[attr-defined]
    assert len(slots) == 4 and len(nodes) >= 2


async def test_a_write_stopped_between_its_steps_is_applied_once_later(
        store: RedisStore) -> None:
    await store.write([assignment(f"c{i}", i % 4, 1, "s0") for i in range(8)], NOW)
    # c1 moves to s1, but the writer stops before applying it to the shards
    await interrupted(store, [assignment("c1", 1, 2, "s1")])
    assert await sizes(store) == {"s0": 8}
    assert len(await changes_of(store)) == 8
    # the redelivered write finds the segment written (no change of its own), and applies
    # what the outbox of its slot still holds: once
    for _ in range(2):
        assert await store.write([assignment("c1", 1, 2, "s1")], NOW) == ([], 0)
        assert await sizes(store) == {"s0": 7, "s1": 1}
        moved = [c for c in await changes_of(store) if c["customer_id"] == "c1"]
        assert [(c["from"], c["to"]) for c in moved] == [(None, "s0"), ("s0", "s1")]
    # the same entries presented again (a second writer of that slot) apply nothing
    assert store.shards is not None
    outbox = store.keys.outbox("c1")
    stale = {b"1-0": [b"p", b"1", b"e", orjson.dumps([["h", "sizes", "s1", 1, 0]])]}
    assert await store.shards.apply({outbox: stale}) == 0
    assert await sizes(store) == {"s0": 7, "s1": 1}


async def test_the_sweep_applies_what_no_later_write_of_the_slot_did(
        store: RedisStore) -> None:
    assert store.shards is not None
    await store.write([assignment("c-sweep", 2, 1, "s0")], NOW)
    await interrupted(store, [assignment("c-sweep", 2, 2, "s4")])
    await store.erase(["gone"], NOW, 3)  # another slot: nothing of c-sweep's moves
    assert await sizes(store) == {"s0": 1}
    assert await store.shards.sweep() >= 1
    assert await sizes(store) == {"s4": 1}
    assert await store.shards.sweep() == 0
    assert await sizes(store) == {"s4": 1}
    assert [c["to"] for c in await changes_of(store)] == ["s0", "s4"]


async def test_one_customers_changes_stay_in_order_in_one_stream(store: RedisStore) -> None:
    path = ["s0", "s1", "s2", "s1", "s3"]
    for offset, segment in enumerate(path, start=1):
        await store.write([assignment("c-path", 3, offset, segment),
                           assignment(f"other-{offset}", offset % 4, offset, "s9")], NOW)
    k = store.keys
    own = [orjson.loads(f[b"change"]) for _, f in await store.r.xrange(k.shard("changes", 3))]
    mine = [(c["from"], c["to"]) for c in own if c["customer_id"] == "c-path"]
    assert mine == list(zip([None, *path[:-1]], path, strict=True))
    assert await sizes(store) == {"s3": 1, "s9": 5}
    # erasure takes the customer out of its own partition's shards
    assert await store.erase(["c-path"], NOW, 3) == 1
    assert await sizes(store) == {"s9": 5}
    assert not await store.r.sismember(k.partition(3), "c-path")
    _, last = (await store.r.xrevrange(k.shard("changes", 3), count=1))[0]
    assert orjson.loads(last[b"change"])["reason"] == "delete"


async def test_readers_sum_the_global_keys_kept_from_before_a_migration(
        store: RedisStore) -> None:
    k = store.keys
    await store.r.hset(k.sizes, mapping={"s0": 5, "s1": 2})  # from the single-key layout
    await store.write([assignment("c-new", 0, 1, "s1")], NOW)
    assert await sizes(store) == {"s0": 5, "s1": 3}
    assert await sum_hashes(store.r, k, "sizes", k.sizes) == {"s0": 5, "s1": 3}


async def test_the_same_code_on_one_redis_keeps_the_global_keys(
        settings: Any, r: aioredis.Redis) -> None:
    if settings.redis_cluster:
        pytest.skip("the suite runs on a cluster: this is the one-Redis case")
    one = RedisStore(r, settings.redis_prefix, 1000)
    assert one.shards is None
    await one.write([assignment(f"c{i}", i % 4, 1, "s0") for i in range(4)], NOW)
    assert await r.hgetall(one.keys.sizes) == {b"s0": b"4"}
    assert await r.xlen(one.keys.changes) == 4
    assert not [k async for k in r.scan_iter(match=f"{settings.redis_prefix}outbox:*")]


async def test_migration_moves_the_one_slot_layout_and_keeps_the_counts(
        store: RedisStore) -> None:
    """The layout clusters used before (``SEGMENTER_REDIS_PREFIX={x}:``, every key in one
    slot), written by the same code, then ``segmenter migrate-cluster``'s work."""
    from stream.keys import Keys
    from stream.migrate import migrate

    new = store.keys
    old_prefix = "{" + new.prefix.rstrip(":") + "}:"
    old = RedisStore(store.r, old_prefix, 1000)
    old.keys, old.shards = Keys(old_prefix), None  # the single-key layout, in one slot
    await old.write([assignment(f"c{i}", i % 4, 1, "s0") for i in range(6)], NOW)
    await old.write([assignment("c1", 1, 2, "s1")], NOW)
    assert await store.r.hgetall(f"{old_prefix}sizes") == {b"s0": b"5", b"s1": b"1"}
    # the old layout's global keys already have their cluster names
    assert f"{old_prefix}sizes" == new.sizes and f"{old_prefix}changes" == new.changes

    done = await migrate(store.r, store.r, old_prefix, new, move=True)
    assert done.customers == 12 and done.other == 4  # 6 hashes + 6 states; 4 indexes
    assert not await store.r.exists(f"{old_prefix}customer:{{c1}}")
    assert (await store.customer("c1") or {})["segment"] == "s1"
    assert await sizes(store) == {"s0": 5, "s1": 1}  # the old counts, read with the shards
    assert len(await changes_of(store)) == 7  # the old stream, still there for its readers
    # the migrated customers go on in the sharded layout: moves counted once, no key lost
    loaded = await store.load_states({"c1", "c2"})
    assert loaded["c1"].segment == "s1" and loaded["c2"].partition == 2
    await store.write([assignment("c1", 1, 3, "s2"), assignment("c2", 2, 3, "s2")], NOW)
    assert await sizes(store) == {"s0": 4, "s2": 2}
    assert len(await changes_of(store)) == 9
    assert await store.r.sismember(new.partition(1), "c1")
    # run again: nothing left to carry over
    again = await migrate(store.r, store.r, old_prefix, new, move=True)
    assert again.customers == 0 and again.other == 0


async def test_migration_copies_from_one_redis(store: RedisStore) -> None:
    """From one Redis (``segmenter migrate-cluster --from``): copied, the source kept."""
    from stream.embedded import start_redis
    from stream.migrate import migrate

    server = start_redis()
    one = connect(server.url)
    try:
        old = RedisStore(one, "old:", 1000)
        await old.write([assignment(f"c{i}", i % 2, 1, "s0") for i in range(3)], NOW)
        done = await migrate(one, store.r, "old:", store.keys, move=False)
        assert done.customers == 6 and done.other >= 4  # indexes, sizes, changes, rfm...
        assert await one.exists("old:customer:{c0}")  # the source is left as it was
        assert (await store.customer("c2") or {})["segment"] == "s0"
        assert await sizes(store) == {"s0": 3}
        assert len(await changes_of(store)) == 3
        assert await store.r.sismember(store.keys.partition(0), "c2")
    finally:
        await one.aclose()
        server.stop()


async def test_shards_go_below_zero_against_the_counts_kept_from_before(
        store: RedisStore) -> None:
    """A buyer counted in the old global RFM population leaves its bucket in a shard; an
    audience member counted in the old global size exits in a shard created later."""
    assert store.shards is not None
    k = store.keys
    await store.r.hset(k.rfm, "r7", 1)
    await store.r.hset(k.audience_sizes, "a-1", 1)
    await store.r.hset(k.audiences, "a-1", "{}")
    outbox = k.outbox("buyer")
    ops = [["h", "rfm", "r7", -1, 1], ["h", "audience-sizes", "a-1", -1, 2]]
    entry = {b"5-0": [b"p", b"6", b"e", orjson.dumps(ops)]}
    assert await store.shards.apply({outbox: entry}) == 1
    assert await sum_hashes(store.r, k, "rfm", k.rfm) == {"r7": 0}
    assert await sum_hashes(store.r, k, "audience-sizes", k.audience_sizes) == {"a-1": 0}
