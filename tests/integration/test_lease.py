"""The leader lease against real Redis: one holder, expiry, and a release that only ever
frees the releaser's own lease."""

from __future__ import annotations

import redis.asyncio as aioredis

from stream.embedded import start_redis
from stream.lease import Lease
from stream.redis_io import connect
from tests.integration.helpers import wait_for


async def test_a_stale_holder_releasing_never_frees_the_new_holders_lease() -> None:
    server = start_redis()  # its own server: the test flushes its scripts
    client: aioredis.Redis = connect(server.url)
    key = "t:lease"
    stale, fresh = Lease(client, key, ttl_ms=300), Lease(client, key)
    try:
        assert await stale.renew() and stale.held
        assert not await fresh.renew()  # one holder at a time
        # the first holder stops renewing (a frozen process); its lease expires
        await wait_for(fresh.renew, 10, "the first lease to expire and pass on")
        assert stale.held  # it has not noticed
        await stale.release()  # e.g. its shutdown, after it wakes up
        assert await client.get(key) == fresh.me.encode()
        assert not stale.held and not await stale.renew()

        await client.script_flush()  # a restarted Redis: scripts reload by themselves
        await fresh.release()
        assert await client.exists(key) == 0  # freed at once, not after the TTL
        assert await stale.renew()
    finally:
        await client.aclose()
        server.stop()


async def test_each_holding_gets_a_newer_fencing_token_and_a_deposed_trainer_cannot_publish(
        ) -> None:
    from stream.redis_io import RedisStore

    server = start_redis()
    client: aioredis.Redis = connect(server.url)
    key = "t:learner"
    old, new = Lease(client, key, ttl_ms=300), Lease(client, key)
    store = RedisStore(client, "t:", 1000)
    try:
        assert await old.renew() and old.token == 1 and old.valid(0.0)
        assert await old.renew() and old.token == 1  # renewing keeps the token
        assert await old.current()
        await wait_for(new.renew, 10, "the first lease to expire and pass on")
        assert new.token == 2 and not await old.current()
        assert not old.valid(0.0)  # by its own clock too, past the lease
        # the deposed holder's publication is refused even with a newer version number
        assert not await store.publish_model(9, '{"version": 9}', {}, [],
                                             (old.fence_key, old.token))
        assert await client.get("t:model-version") is None
        assert await store.publish_model(2, '{"version": 2}', {}, [], (new.fence_key, new.token))
        assert await client.get("t:model") == b'{"version": 2}'
    finally:
        await client.aclose()
        server.stop()
