"""Redis side of live traits and RFM segments (contract §2.1, §2.2).

The customer hash ``seg:customer:{<id>}`` gets these fields, written by the same atomic,
fenced script that writes the customer's state (:data:`TRAITS_LUA`, used by
:mod:`stream.redis_io`), so they are exactly as current as the state:

- one field per live trait (``orders``, ``revenue``, ``events``, ``first_seen``, ...:
  :data:`models.traits.TRAIT_NAMES`, written by :func:`models.traits.encode`);
- ``rfm``: the RFM segment name (empty without a purchase).

The population of buyers is the hash ``seg:rfm`` (``r<bucket>``, ``f<bucket>``,
``m<bucket>`` -> buyers), and its joint recency x frequency histogram the hash
``seg:rfm-grid`` (``<r bucket>:<f bucket>`` -> buyers; the dashboard's grid,
:func:`read_grid`): the script computes a customer's buckets from the hash's
``last_purchase``, ``orders`` and ``revenue`` before and after the write and moves them only
when they change, so a replayed, redelivered or re-sent write changes no count. Erasure
takes the customer out (``stream.redis_io``).

:class:`RfmRefresher` keeps every worker's quintiles current (read from ``seg:rfm`` after
each flush of states, before the offsets are committed) and walks the customers the worker
holds in memory (round-robin, as re-scoring does) to bring their ``rfm`` names up to date as
the population moves: a customer drifts from Champions towards At Risk as others buy, without
any event of theirs. A customer no worker holds (evicted from every cache) gets their name
brought up to date at their next event.
``GET /customers/<id>`` scores at read time and is always
current.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError

from models.rfm import Population, Quintiles, grid
from models.state import CustomerState
from models.stitching import RECORD_FRAME
from models.traits import from_fields
from stream.keys import decode_state
from stream.resp import run_many
from stream.shards import sum_hashes
from stream.stitch_lua import MIRROR_LUA

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from models.core import Segmenter
    from stream.keys import Keys

# Lua functions, prepended to the write scripts: the customer's RFM buckets from their
# trait fields (as :func:`models.rfm.bucket_key`), moved in the population when they change
# (through ``agg_hincr`` of ``stream.write_lua``: global keys, or the sharded layout's outbox).
RFM_LUA = """
local function rfm_parts(lp, orders, rev)
  lp, orders, rev = tonumber(lp), tonumber(orders), tonumber(rev)
  if not lp or not orders or orders < 1 then return {} end
  local f = orders
  if orders > 100 then f = 101 + math.floor(math.log(orders / 100) / math.log(1.01)) end
  local m = math.floor(math.log(1 + math.max(rev or 0, 0)) / math.log(1.01))
  return {string.format('r%d', math.floor(lp / 3600000)), string.format('f%d', f),
          string.format('m%d', m)}
end
local function move_rfm(pop, grid, parts, n)
  for _, part in ipairs(parts) do agg_hincr(pop, 'rfm', part, n, 1) end
  if #parts == 3 then  -- the joint recency x frequency cell, '<r bucket>:<f bucket>'
    local cell = string.sub(parts[1], 2) .. ':' .. string.sub(parts[2], 2)
    agg_hincr(grid, 'rfm-grid', cell, n, 1)
  end
end
local function rfm_of(h)
  local v = redis.call('HMGET', h, 'last_purchase', 'orders', 'revenue')
  return rfm_parts(v[1], v[2], v[3])
end
"""
# The traits (name/value pairs joined by \x1f), the RFM name and the population. With
# ``delta`` (stream.written) ``tr`` holds only the fields that changed since the writer's last
# write, which the state's head showed to be the stored one: every RFM input when one changed
# (the buckets then come from the same values as a full write's), none when the buckets cannot
# have moved (no lookup then).
TRAITS_LUA = RFM_LUA + """
local function put_traits(h, pop, grid, tr, name, delta)
  if tr == '' and not delta then return end
  local args, new = {}, {}
  for part in string.gmatch(tr, '[^\\31]+') do args[#args + 1] = part end
  for i = 1, #args - 1, 2 do new[args[i]] = args[i + 1] end
  if not delta or new['orders'] or new['revenue'] or new['last_purchase'] then
    local was = rfm_of(h)
    local now = rfm_parts(new['last_purchase'], new['orders'], new['revenue'])
    if table.concat(was, ',') ~= table.concat(now, ',') then
      move_rfm(pop, grid, was, -1)
      move_rfm(pop, grid, now, 1)
    end
  end
  args[#args + 1], args[#args + 2] = 'rfm', name  -- the contract's field: '' without a purchase
  redis.call('HSET', h, unpack(args))
end
"""
# Erasure: take the customer out of the population before the hash goes.
FORGET_LUA = RFM_LUA + """
local function forget_rfm(h, pop, grid)
  move_rfm(pop, grid, rfm_of(h), -1)
end
"""
# A name moved with the population, unless a purchase moved the customer meanwhile; the
# mirrors of the customer's linked anonymous ids follow (ARGV[4]: '1' on Redis Cluster,
# where they are not in this slot; ARGV[5]: the customer id).
_RENAME = "local SHARDED = ARGV[4] == '1'\n" + MIRROR_LUA + """
local v = redis.call('HMGET', KEYS[1], 'orders', 'last_purchase')
if v[1] ~= ARGV[1] or v[2] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'rfm', ARGV[3])
mirror_links(KEYS[1], ARGV[5])
return 1
"""


async def read_customer(r: aioredis.Redis, keys: Keys,
                        cid: str) -> tuple[dict[str, str], CustomerState | None] | None:
    """A customer's hash and state, one round trip; None for an unknown customer."""
    async with r.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.customer(cid))
        pipe.get(keys.state(cid))
        raw, blob = await pipe.execute()
    if not raw:
        return None
    doc = {_text(k): _text(v) for k, v in raw.items()}
    blob = blob.split(b":", 2)[2] if blob else b""
    # a linked anonymous id holds a link record: its hash mirrors its customer's
    state = decode_state(cid, blob, from_fields(doc)) if blob and not blob.startswith(
        RECORD_FRAME) else None
    return doc, state


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def read_quintiles(r: aioredis.Redis, keys: Keys) -> Quintiles:
    """The quintiles of the population of buyers, as Redis holds it now."""
    raw = await sum_hashes(r, keys, "rfm", keys.rfm)
    return Population.from_fields((k, n) for k, n in raw.items() if n > 0).quintiles()


async def read_grid(r: aioredis.Redis, keys: Keys) -> dict[str, Any]:
    """The dashboard's RFM grid (:func:`models.rfm.grid`): the population and the joint
    recency x frequency buckets read together (one round trip), so the cells are scored with
    the quintiles of the same moment. ``seg:rfm-grid`` has one field per distinct pair of
    last-purchase hour and order count among buyers (at most one per buyer)."""
    if keys.cluster:  # summed over the shards: two round trips, close enough in time
        pop_raw = await sum_hashes(r, keys, "rfm", keys.rfm)
        grid_raw = await sum_hashes(r, keys, "rfm-grid", keys.rfm_grid)
    else:
        async with r.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.rfm)
            pipe.hgetall(keys.rfm_grid)
            pop_raw, grid_raw = await pipe.execute()
    q = Population.from_fields(
        (_text(k), int(v)) for k, v in pop_raw.items() if int(v) > 0).quintiles()
    cells = []
    for k, v in grid_raw.items():
        if int(v) <= 0:  # (sharded: a bucket emptied in one shard, kept in another)
            continue
        rb, _, fb = _text(k).partition(":")
        cells.append((int(rb), int(fb), int(v)))
    return grid(cells, q)


class RfmRefresher:
    """Keeps a worker's RFM quintiles current and its customers' ``rfm`` names.

    Parameters
    ----------
    r, keys
        The Redis client and key layout.
    per_tick
        Cached customers looked at per :meth:`tick` (a round-robin pass over the cache).
    """

    def __init__(self, r: aioredis.Redis, keys: Keys, per_tick: int = 20_000) -> None:
        self.r, self.keys, self.per_tick = r, keys, per_tick
        self.quintiles = Quintiles()
        self.renamed = 0  # names brought up to date without an event, for the metrics
        self._rename = r.register_script(_RENAME)
        self._loaded = False

    async def tick(self, core: Segmenter) -> None:
        """Read the quintiles into ``core``; write the names that moved with them (of the
        customers this worker holds: each worker its own partitions')."""
        self.quintiles = await read_quintiles(self.r, self.keys)
        core.assigner.rfm = self.quintiles
        moves = core.assigner.rfm_moves(self.per_tick)
        if not moves:
            return
        if not self._loaded:  # (a cluster pipeline cannot load it as it runs)
            await self.r.script_load(_RENAME)
            self._loaded = True
        sharded = "1" if self.keys.cluster else ""
        try:
            done = await run_many(self.r, [
                ("EVALSHA", self._rename.sha, 1, self.keys.customer(cid), orders, last, name,
                 sharded, cid)
                for cid, orders, last, name in moves])
        except Exception as exc:
            if isinstance(exc, NoScriptError):  # Redis restarted: loaded again next time
                self._loaded = False
            for cid, *_ in moves:  # looked at again in the next pass
                st = core.states.get(cid)
                if st is not None:
                    st.rfm = ""
            raise
        self.renamed += sum(1 for d in done if d == 1)
