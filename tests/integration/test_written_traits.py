"""Writes that send only the changed trait fields (``stream.written``) against real Redis
(one server, or a Redis Cluster with ``SEGMENTER_TEST_REDIS=cluster``): the same customer
hash and RFM population as writes of every field, and a full write whenever someone else
wrote the customer since this worker's last write."""

from __future__ import annotations

from typing import Any

from models.core import Assignment
from models.state import CustomerState
from models.traits import encode
from stream.redis_io import RedisStore, connect
from stream.settings import Settings

NOW = 1767225600000
DAY = 86_400_000


def write(cid: str, offset: int, **traits: Any) -> Assignment:
    """An assignment of ``cid`` at ``offset`` of partition 1 with these traits."""
    st = CustomerState(cid)
    st.partition, st.offset, st.last_ts = 1, offset, NOW
    return Assignment(customer_id=cid, segment="s1", segment_name="one", confidence=0.5,
                      model_version=3, event_id=f"e{offset}", event_ts=NOW, reason="event",
                      explanation="", partition=1, offset=offset, state=st.to_bytes(),
                      traits=encode(traits), rfm="Champions" if traits.get("orders") else "")


def history(cid: str) -> list[Assignment]:
    """Five writes of one customer: counters move at each, a device and a first purchase
    come later (fields added), the device changes back and forth."""
    base = {"orders": 0, "revenue": 0, "events": 1, "first_seen": NOW - 9 * DAY}
    return [
        write(cid, 10, **base, last_seen=NOW - 9 * DAY),
        write(cid, 11, **{**base, "events": 2}, last_seen=NOW - 8 * DAY, device="web"),
        write(cid, 12, **{**base, "events": 3, "orders": 1, "revenue": 25.5},
              last_seen=NOW - 7 * DAY, last_purchase=NOW - 7 * DAY, device="web",
              categories=["shoes"]),
        write(cid, 13, **{**base, "events": 4, "orders": 1, "revenue": 25.5},
              last_seen=NOW - 6 * DAY, last_purchase=NOW - 7 * DAY, device="app",
              categories=["shoes"]),
        write(cid, 14, **{**base, "events": 5, "orders": 2, "revenue": 40},
              last_seen=NOW - 5 * DAY, last_purchase=NOW - 5 * DAY, device="web",
              categories=["shoes", "bags"]),
    ]


async def test_changed_fields_only_leave_the_hash_and_rfm_of_full_writes(
        settings: Settings) -> None:
    client = connect(settings.redis_url, cluster=settings.redis_cluster)
    deltas = RedisStore(client, settings.redis_prefix, settings.stream_maxlen)
    full = RedisStore(client, settings.redis_prefix + "full:", settings.stream_maxlen,
                      remember=0)  # remembers nothing: every field at every write
    try:
        for a, b in zip(history("c1"), history("c1"), strict=True):
            assert (await deltas.write([a], NOW))[1] == 0
            assert (await full.write([b], NOW))[1] == 0
        assert len(deltas.written) == 1 and len(full.written) == 0
        got = await client.hgetall(deltas.keys.customer("c1"))
        want = await client.hgetall(full.keys.customer("c1"))
        assert list(got.items()) == list(want.items())  # field order too (listpack)
        assert got[b"device"] == b"web" and got[b"events"] == b"5"
        if not settings.redis_cluster:  # the RFM population (sharded layout: per partition)
            assert await client.hgetall(deltas.keys.rfm) == await client.hgetall(full.keys.rfm)
            assert await client.hgetall(deltas.keys.rfm_grid) == await client.hgetall(
                full.keys.rfm_grid)
    finally:
        await client.aclose()


async def test_a_write_by_another_worker_since_makes_the_next_write_full(
        settings: Settings) -> None:
    client = connect(settings.redis_url, cluster=settings.redis_cluster)
    mine = RedisStore(client, settings.redis_prefix, settings.stream_maxlen)
    other = RedisStore(client, settings.redis_prefix, settings.stream_maxlen)
    try:
        steps = history("c2")
        await mine.write(steps[:3], NOW)  # remembers device "web" at offset 12
        await other.write([steps[3]], NOW)  # after a rebalance: device "app" at offset 13
        # offset 14 has device "web" again: unchanged from what this worker last wrote, so
        # only a full write (the head is 13's, not 12's) brings it back
        assert await mine.write([steps[4]], NOW, refresh=True) == ([], 0)
        h = await client.hgetall(mine.keys.customer("c2"))
        assert h[b"device"] == b"web" and h[b"events"] == b"5" and h[b"orders"] == b"2"
        state = await client.get(mine.keys.state("c2"))
        assert state.startswith(b"1:14:")
        # a write this worker's memory does not know of, with an older offset: fenced, and
        # forgotten (the next write is full)
        assert (await mine.write([steps[2]], NOW))[1] == 1
        assert len(mine.written) == 0
    finally:
        await client.aclose()
