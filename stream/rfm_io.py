"""Redis side of live traits and RFM segments (contract §2.1, §2.2).

The customer hash ``seg:customer:{<id>}`` gets three fields, written by the same atomic,
fenced script that writes the customer's state (:data:`TRAITS_LUA`, used by
:mod:`stream.redis_io`), so they are exactly as current as the state:

- one field per live trait (``orders``, ``revenue``, ``events``, ``first_seen``, ...:
  :data:`models.traits.TRAIT_NAMES`, written by :func:`models.traits.encode`);
- ``rfm``: the RFM segment name (empty without a purchase);
- ``rfm_k``: the customer's RFM bucket key (:func:`models.rfm.format_key`).

The population of buyers is the hash ``seg:rfm`` (``r<bucket>``, ``f<bucket>``,
``m<bucket>`` -> buyers): the script moves a customer from their old buckets to their new
ones only when ``rfm_k`` changes, so a replayed, redelivered or re-sent write changes no
count. Erasure takes the customer out (``stream.redis_io``).

:class:`RfmRefresher` keeps every worker's quintiles current (read from ``seg:rfm``) and,
on the training worker only, walks the customer hashes to bring each ``rfm`` name up to date
as the population moves (a customer drifts from Champions towards At Risk as others buy,
without any event of theirs). ``GET /customers/<id>`` scores at read time and is always
current.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from models.rfm import Population, Quintiles, parse_key

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from models.core import Segmenter
    from stream.keys import Keys

# A Lua function, prepended to the write scripts: traits, the RFM name and the population.
TRAITS_LUA = """
local function put_traits(h, pop, tr, k, name)
  if tr == '' then return end
  local old = redis.call('HGET', h, 'rfm_k') or ''
  if old ~= k then
    for part in string.gmatch(old, '[^,]+') do
      if redis.call('HINCRBY', pop, part, -1) <= 0 then redis.call('HDEL', pop, part) end
    end
    for part in string.gmatch(k, '[^,]+') do redis.call('HINCRBY', pop, part, 1) end
  end
  local args = {}
  for part in string.gmatch(tr, '[^\\31]+') do args[#args + 1] = part end
  if k ~= '' then
    args[#args + 1], args[#args + 2], args[#args + 3], args[#args + 4] = 'rfm_k', k, 'rfm', name
  else  -- the contract's field, empty without a purchase
    args[#args + 1], args[#args + 2] = 'rfm', ''
  end
  redis.call('HSET', h, unpack(args))
end
"""
# Erasure: take the customer out of the population before the hash goes.
FORGET_LUA = """
local function forget_rfm(h, pop)
  local old = redis.call('HGET', h, 'rfm_k') or ''
  for part in string.gmatch(old, '[^,]+') do
    if redis.call('HINCRBY', pop, part, -1) <= 0 then redis.call('HDEL', pop, part) end
  end
end
"""
# The sweep's update of a name, unless a write moved the customer meanwhile.
_RENAME = """
if redis.call('HGET', KEYS[1], 'rfm_k') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'rfm', ARGV[2])
return 1
"""


def customer_pattern(keys: Keys) -> str:
    """``SCAN MATCH`` pattern of every customer hash."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", keys.prefix) + "customer:{*}"


async def read_quintiles(r: aioredis.Redis, keys: Keys) -> Quintiles:
    """The quintiles of the population of buyers, as Redis holds it now."""
    raw = await r.hgetall(keys.rfm)
    return Population.from_fields(
        (k.decode() if isinstance(k, bytes) else k, int(v)) for k, v in raw.items()
    ).quintiles()


class RfmRefresher:
    """Keeps a worker's RFM quintiles current and (on the trainer) customers' names.

    Parameters
    ----------
    r, keys
        The Redis client and key layout.
    per_tick
        Customer hashes the name sweep reads per :meth:`tick`.
    """

    def __init__(self, r: aioredis.Redis, keys: Keys, per_tick: int = 2000) -> None:
        self.r, self.keys, self.per_tick = r, keys, per_tick
        self.quintiles = Quintiles()
        self.renamed = 0  # names brought up to date by the sweep, for the metrics
        self._cursor = 0
        self._rename = r.register_script(_RENAME)

    async def tick(self, core: Segmenter) -> None:
        """Read the quintiles into ``core``; on the training worker, one step of the sweep."""
        self.quintiles = await read_quintiles(self.r, self.keys)
        core.assigner.rfm = self.quintiles
        if core.schedule.trains and self.quintiles.buyers:
            self.renamed += await self.sweep_step(self.quintiles)

    async def sweep_step(self, q: Quintiles) -> int:
        """Bring the ``rfm`` names of one ``SCAN`` step's customers up to ``q``; returns
        how many changed."""
        self._cursor, hashes = await self.r.scan(
            self._cursor, match=customer_pattern(self.keys), count=self.per_tick)
        if not hashes:
            return 0
        async with self.r.pipeline(transaction=False) as pipe:
            for h in hashes:
                pipe.hmget(h, "rfm_k", "rfm")
            got = await pipe.execute()
        stale = []
        for h, (k, name) in zip(hashes, got, strict=True):
            if k is None:
                continue
            want = q.name(parse_key(k.decode()))
            if want and want.encode() != name:
                stale.append((h, k, want))
        if not stale:
            return 0
        async with self.r.pipeline(transaction=False) as pipe:
            for h, k, want in stale:
                pipe.evalsha(self._rename.sha, 1, h, k, want)
            done = await pipe.execute(raise_on_error=False)
        if any(type(d).__name__ == "NoScriptError" for d in done):
            await self.r.script_load(_RENAME)  # lost on a restart: the next tick redoes it
        return sum(1 for d in done if d == 1)
