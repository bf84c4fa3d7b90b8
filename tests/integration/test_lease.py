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
