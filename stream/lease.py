"""A leader lease in Redis: one holder at a time, renewed while alive, free again
``ttl_ms`` after its holder dies (kill -9 included)."""

from __future__ import annotations

import contextlib
import os
import socket

import redis.asyncio as aioredis

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0
"""
# Compare and delete in one step: a lease that expired and went to another holder between a
# GET and a DEL would otherwise be deleted from under it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Lease:
    """Hold ``key`` as ``me`` (host-pid-object, unique per process and object)."""

    def __init__(self, redis: aioredis.Redis, key: str, ttl_ms: int = 10_000) -> None:
        self.r, self.key, self.ttl_ms = redis, key, ttl_ms
        self.me = f"{socket.gethostname()}-{os.getpid()}-{id(self):x}"
        self.held = False
        # EVALSHA, loaded again by redis-py when the server answers NOSCRIPT.
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    async def renew(self) -> bool:
        """Take or keep the lease; True while held. Raises Redis errors."""
        self.held = bool(await self._renew(keys=[self.key], args=[self.me, self.ttl_ms]))
        return self.held

    async def release(self) -> None:
        """Give the lease up now (on shutdown) so another worker takes over at once."""
        if self.held:
            with contextlib.suppress(Exception):  # shutting down: expiry frees it anyway
                await self._release(keys=[self.key], args=[self.me])
        self.held = False
