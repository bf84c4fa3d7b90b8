"""A leader lease in Redis: one holder at a time, renewed while alive, free again
``ttl_ms`` after its holder dies (kill -9 included), with a fencing token.

Each acquisition increments a counter next to the lease (``<key>:fence``) and the holder
keeps the value as its token. A write only a holder may make checks, in the same script as
the write, that the counter still equals its token (:data:`FENCE_LUA`): a holder frozen past
its lease (a GC pause, SIGSTOP, a partition from Redis) wakes up with an older token than its
successor's, so it can never write after it. For what is not a Redis write (the relay's
produce to Kafka), :meth:`Lease.valid` tells whether the lease can still be trusted by the
holder's own clock.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time

import redis.asyncio as aioredis

# Renew (the holder) or take (a free lease, with a new fencing token): the token, 0 if not
# held. A counter lost with Redis's data starts again from 1 for the next holder.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  local t = redis.call('GET', KEYS[2])
  if not t then t = redis.call('INCR', KEYS[2]) end
  return tonumber(t)
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return 0
"""
# Compare and delete in one step: a lease that expired and went to another holder between a
# GET and a DEL would otherwise be deleted from under it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
FENCE_LUA = """
local function fenced(key, token)
  return tonumber(redis.call('GET', key) or '0') ~= tonumber(token)
end
"""
"""Lua ``fenced(fence_key, token)``: true when a newer holder took the lease since ``token``
was issued (prepend to a script and return before writing)."""


class Lease:
    """Hold ``key`` as ``me`` (host-pid-object, unique per process and object)."""

    def __init__(self, redis: aioredis.Redis, key: str, ttl_ms: int = 10_000) -> None:
        self.r, self.key, self.ttl_ms = redis, key, ttl_ms
        self.fence_key = f"{key}:fence"
        self.me = f"{socket.gethostname()}-{os.getpid()}-{id(self):x}"
        self.held = False
        self.token = 0
        """Fencing token of the current holding (0 when not held)."""
        self._until = 0.0  # monotonic time the lease surely lasts to, by our own clock
        # EVALSHA, loaded again by redis-py when the server answers NOSCRIPT.
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    async def renew(self) -> bool:
        """Take or keep the lease; True while held. Raises Redis errors."""
        asked = time.monotonic()
        self.token = int(await self._renew(keys=[self.key, self.fence_key],
                                           args=[self.me, self.ttl_ms]))
        self.held = self.token > 0
        self._until = asked + self.ttl_ms / 1000 if self.held else 0.0
        return self.held

    def valid(self, margin_s: float = 2.0) -> bool:
        """Held, by our own clock, for at least ``margin_s`` more seconds (false after a
        pause of the process longer than the lease: a successor may hold it)."""
        return self.held and time.monotonic() < self._until - margin_s

    async def current(self) -> bool:
        """No newer holder took the lease since our token (one ``GET``)."""
        return self.held and int(await self.r.get(self.fence_key) or 0) == self.token

    async def release(self) -> None:
        """Give the lease up now (on shutdown) so another worker takes over at once."""
        if self.held:
            with contextlib.suppress(Exception):  # shutting down: expiry frees it anyway
                await self._release(keys=[self.key], args=[self.me])
        self.held, self.token = False, 0
