"""The change relay's fencing, step by step against the real broker and Redis: a relay
whose lease passed to another takes nothing, and one paused between taking entries and
sending them sends nothing; its successor sends them, once and in stream order."""

from __future__ import annotations

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from stream.kafka_io import ensure_topics
from stream.keys import Keys
from stream.relay import GROUP, ChangeRelay
from stream.settings import Settings
from stream.shards import change_id
from tests.integration.helpers import consume_all, wait_for
from tests.integration.test_subscribe_limit import change_stream


async def test_a_deposed_or_paused_relay_sends_nothing_and_its_successor_sends_it_once(
        settings: Settings, r: aioredis.Redis) -> None:
    await ensure_topics(settings)
    stream = await change_stream(r, settings)  # on a cluster: a partition's shard
    lock = Keys(settings.redis_prefix, cluster=settings.redis_cluster).relay_lease(stream)
    ids = [await r.xadd(stream, {"change": orjson.dumps({"customer_id": f"c{i % 3}", "n": i})})
           for i in range(6)]
    change_ids = [change_id(stream, i).encode() for i in ids]  # on a cluster: "0:<id>"
    await r.xgroup_create(stream, GROUP, id="0")
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka, acks="all")
    await producer.start()

    def relay() -> ChangeRelay:
        one = ChangeRelay(r, producer, stream, settings.changes_topic, lock)
        one.lease.ttl_ms = 2500  # valid by its own clock for 0.5 s (2 s margin)
        return one
    a, b, c = relay(), relay(), relay()
    try:
        # a holds the lease, then stalls until it has passed to b: a takes nothing
        assert await a.lease.renew()
        await wait_for(b.lease.renew, 10, "the lease to pass from a to b", every=0.1)
        assert await a._relay_once(">") == (0, None) and not a.leader
        assert (await r.xpending(stream, GROUP))["pending"] == 0

        # b takes the entries, then pauses past its lease before sending: it sends nothing,
        # the entries stay pending for its successor
        async def stale() -> bool:
            return not b.lease.valid()
        await wait_for(stale, 10, "b's lease to run out by its own clock", every=0.05)
        assert await b._relay_once(">") == (0, None) and b.fenced == 1
        assert (await r.xpending(stream, GROUP))["pending"] == 6
        await wait_for(c.lease.renew, 10, "the lease to pass from b to c", every=0.1)
        assert (await c._relay_once("0"))[0] == 6  # the successor sends them first
        assert (await r.xpending(stream, GROUP))["pending"] == 0
        # b's late acknowledgement would be refused too
        assert await b._ack(keys=[stream, b.lease.fence_key],
                            args=[b.lease.token, GROUP, ids[0]]) == -1
    finally:
        await producer.stop()
    sent = await consume_all(settings, settings.changes_topic, 6, 30)
    got = [dict(m.headers)["segmenter.change_id"] for m in sent]
    assert sorted(got) == sorted(change_ids)  # each once
    for k in range(3):  # per customer, in stream order
        mine = [dict(m.headers)["segmenter.change_id"] for m in sent if m.key == f"c{k}".encode()]
        assert mine == [change_ids[n] for n in range(6) if n % 3 == k]
