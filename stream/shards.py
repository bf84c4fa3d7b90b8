"""The sharded layout for Redis Cluster: no global key on the per-event path.

A Redis Cluster script may only touch keys of one slot, and a customer's keys are in the
slot of the customer id (contract §2: ``seg:customer:{<id>}``). So a customer write cannot
also move a global ``seg:sizes`` or append to one ``seg:changes`` stream; and if it could,
that one slot would take every event (the hot shard). In this layout:

1. The customer write (``stream.write_lua``, atomic and fenced as on one Redis) records
   what it moves in the aggregates (segment and audience sizes, the RFM population and
   grid, the partition index, the change messages) as ONE entry of the **outbox** of its
   own slot, ``seg:outbox:{<tag of the slot>}``, in the same call; the reply carries the
   outbox's entries.
2. The writer applies those entries to the **shards** of the events-topic partition each
   was written from (``seg:sizes:{3}``, ``seg:changes:{3}``, ``seg:rfm:{3}``,
   ``seg:rfm-grid:{3}``, ``seg:audience-sizes:{3}``, ``seg:audience-changes:{3}``,
   ``seg:partition:{3}``: the partition number is the hash tag), one script call per
   partition (:data:`APPLY`). The partition's hash ``seg:moved:{3}`` remembers, per
   outbox, the id of the last entry applied; an entry at or below it is skipped. So an
   entry is applied exactly once whoever presents it, however often (a redelivery, two
   workers writing customers of the same slot, a crash between the steps).
3. Then the outboxes are trimmed below what was applied (``XTRIM MINID``).

Both steps happen before the batch's offsets are committed (write, then commit). A crash
between them leaves entries in the outbox: the next write to any customer of that slot
returns them (its reply has every entry still in the outbox) and they are applied then,
in order, before anything newer of that slot; :meth:`Shards.sweep` applies those of slots
nobody writes to (a worker runs it at start).

A customer's events all come from one partition (producers key by customer id), so all
their changes go to one stream, in order: an outbox keeps its entries in order and they are
applied in order. Readers merge the shards (:meth:`Shards.partitions` lists them) and the
global keys of the single-Redis layout (``{seg}:sizes``, ``{seg}:changes``, ...: on a
cluster the global keys' names carry the tag ``{<prefix>}``), which a deployment keeps from
before its migration (README, "Redis Cluster").
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import NoScriptError

from stream.keys import Keys

log = logging.getLogger(__name__)

AGGREGATES = ("sizes", "changes", "rfm", "rfm-grid", "audience-sizes", "audience-changes")
"""The aggregates kept per partition, in the order of :data:`APPLY`'s first keys."""

# KEYS: the aggregates of one partition (AGGREGATES), its partition index, its ``moved``
# hash. ARGV: stream maxlen, the Pub/Sub channels of changes and audience changes, then a
# triple per outbox entry: the outbox's slot, the entry id, the recorded effects (JSON).
APPLY = """
local names = {sizes = KEYS[1], changes = KEYS[2], rfm = KEYS[3], ['rfm-grid'] = KEYS[4],
  ['audience-sizes'] = KEYS[5], ['audience-changes'] = KEYS[6]}
local channels = {changes = ARGV[2], ['audience-changes'] = ARGV[3]}
local function after(a, b)  -- stream id a is newer than b
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am > bm or (am == bm and as > bs)
end
local applied = 0
for i = 4, #ARGV, 3 do
  local last = redis.call('HGET', KEYS[8], ARGV[i])
  if not last or after(ARGV[i + 1], last) then
    for _, op in ipairs(cjson.decode(ARGV[i + 2])) do
      local kind = op[1]
      if kind == 'h' then
        local key, field, n, mode = names[op[2]], op[3], op[4], op[5]
        if mode ~= 2 or redis.call('HEXISTS', key, field) == 1 then
          -- (at exactly 0: a shard may go below, its buyers counted in the global key
          -- kept from before a migration, or in another partition's shard)
          if redis.call('HINCRBY', key, field, n) == 0 and mode == 1 then
            redis.call('HDEL', key, field)
          end
        end
      elseif kind == 'x' then
        redis.call('XADD', names[op[2]], 'MAXLEN', '~', ARGV[1], '*', op[3], op[4])
        redis.call('PUBLISH', channels[op[2]], op[4])
      elseif kind == 's' then
        redis.call('SADD', KEYS[7], op[2])
      elseif kind == 'r' then
        redis.call('SREM', KEYS[7], op[2])
      end
    end
    redis.call('HSET', KEYS[8], ARGV[i], ARGV[i + 1])
    applied = applied + 1
  end
end
return applied
"""

Entry = tuple[bytes, list[bytes]]
"""An outbox entry as a script returns it: id, flat field/value list."""


class Shards:
    """The per-partition aggregates of one Redis Cluster (see the module's docstring).

    Parameters
    ----------
    client
        A Redis (Cluster) client.
    keys
        The key layout (``cluster=True``).
    maxlen
        Approximate length the change streams are trimmed to.
    """

    def __init__(self, client: aioredis.Redis, keys: Keys, maxlen: int) -> None:
        self.r, self.keys, self.maxlen = client, keys, maxlen
        self._apply = client.register_script(APPLY)
        self._known: set[int] = set()
        self.applied = 0
        """Outbox entries applied by this process (for tests and metrics)."""

    def shard_keys(self, partition: int | str) -> list[str]:
        """:data:`APPLY`'s keys for one partition."""
        k = self.keys
        return [*(k.shard(a, partition) for a in AGGREGATES), k.partition(partition),
                k.shard("moved", partition)]

    async def apply(self, outboxes: dict[str, dict[bytes, list[bytes]]]) -> int:
        """Apply these outbox entries (outbox key -> entry id -> fields) to their
        partitions' shards, then trim each outbox below what was applied. Returns how many
        entries were new to the shards."""
        by_partition: dict[int, list[Any]] = defaultdict(list)
        for outbox, entries in outboxes.items():
            slot = key_slot(outbox.encode())
            for eid in sorted(entries, key=_id_order):
                fields = dict(zip(entries[eid][::2], entries[eid][1::2], strict=True))
                by_partition[int(fields[b"p"])] += [slot, eid, fields[b"e"]]
        if not by_partition:
            return 0
        await self.register(by_partition)
        chans = (self.keys.prefix + "changes", self.keys.prefix + "audience-changes")
        async with self.r.pipeline(transaction=False) as pipe:
            for partition, triples in by_partition.items():
                keys = self.shard_keys(partition)
                pipe.execute_command("EVALSHA", self._apply.sha, len(keys), *keys, self.maxlen,
                                     *chans, *triples)
            try:
                done = await pipe.execute()
            except NoScriptError:  # a restarted server (each application is idempotent)
                await self.r.script_load(APPLY)
                return await self.apply(outboxes)
        async with self.r.pipeline(transaction=False) as pipe:
            for outbox, entries in outboxes.items():
                newest = max(entries, key=_id_order)
                ms, seq = _id_order(newest)
                pipe.xtrim(outbox, minid=f"{ms}-{seq + 1}", approximate=False)
            await pipe.execute()
        self.applied += sum(done)
        return sum(done)

    async def register(self, partitions: Iterable[int]) -> None:
        """Record these partitions in :attr:`Keys.shards` (before their first shard write,
        so a reader that lists the shards finds them)."""
        new = set(partitions) - self._known
        if new:
            await self.r.sadd(self.keys.shards, *sorted(new))
            # each audience's size field, so that exits count in a new shard too (an exit
            # moves a shard's size only while its field exists: deleted audiences stay out)
            audiences = await self.r.hkeys(self.keys.audiences)
            if audiences:
                async with self.r.pipeline(transaction=False) as pipe:
                    for p in new:
                        for a in audiences:
                            pipe.hsetnx(self.keys.shard("audience-sizes", p), a, 0)
                    await pipe.execute()
            self._known |= new

    async def sweep(self, batch: int = 512) -> int:
        """Apply what any outbox still holds (a writer that crashed between its two steps,
        in a slot nobody wrote to since): reads every slot's outbox. Returns how many
        entries were new to the shards."""
        from stream.keys import slot_tag

        done = 0
        prefix = self.keys.prefix
        for start in range(0, 16384, batch):
            names = [f"{prefix}outbox:{{{slot_tag(s)}}}" for s in range(start, start + batch)]
            async with self.r.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.xrange(name, count=200)
                got = await pipe.execute()
            found = {n: {eid: _flat(f) for eid, f in entries}
                     for n, entries in zip(names, got, strict=True) if entries}
            if found:
                done += await self.apply(found)
        return done



async def partitions(r: aioredis.Redis, keys: Keys) -> list[int]:
    """Every partition that has shards (none on one Redis)."""
    if not keys.cluster:
        return []
    return sorted(int(p) for p in await r.smembers(keys.shards))


async def sum_hashes(r: aioredis.Redis, keys: Keys, name: str, legacy: str) -> dict[str, int]:
    """A counting hash (``sizes``, ``rfm``, ``rfm-grid``, ``audience-sizes``): the global
    key ``legacy`` on one Redis; in the sharded layout, that key (kept from before a
    migration) summed with every partition's shard. One round trip after the listing."""
    names = [legacy, *(keys.shard(name, p) for p in await partitions(r, keys))]
    async with r.pipeline(transaction=False) as pipe:
        for key in names:
            pipe.hgetall(key)
        got = await pipe.execute()
    out: dict[str, int] = defaultdict(int)
    for h in got:
        for field, n in h.items():
            out[field.decode() if isinstance(field, bytes) else field] += int(n)
    return dict(out)


async def streams(r: aioredis.Redis, keys: Keys, name: str, legacy: str) -> list[str]:
    """The streams of ``name`` (``changes``, ``audience-changes``): ``legacy`` (the global
    one) on one Redis; in the sharded layout every partition's, after ``legacy`` while it
    exists (kept from before a migration, for its readers to finish)."""
    if not keys.cluster:
        return [legacy]
    shards = [keys.shard(name, p) for p in await partitions(r, keys)]
    return [legacy, *shards] if await r.exists(legacy) else shards


def change_id(stream: str, entry_id: bytes | str) -> str:
    """The id of a change (``segmenter.change_id``, ``segmenter subscribe``'s ``id``): its
    stream entry id; in a partition's shard ``<partition>:<entry id>``, since entry ids
    are unique within one stream only.

    >>> change_id("seg:changes", b"17-0"), change_id("seg:changes:{3}", "17-0")
    ('17-0', '3:17-0')
    """
    eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    if stream.endswith("}"):
        return f"{stream[stream.rindex('{') + 1:-1]}:{eid}"
    return eid


async def newest(r: aioredis.Redis, names: list[str], count: int) -> list[Any]:
    """The ``count`` newest entries over these streams, newest first (``XREVRANGE`` of
    each, merged by id: ids are times, so this is the order they were written in)."""
    async with r.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.xrevrange(name, count=count)
        got = await pipe.execute()
    merged = [e for entries in got for e in entries]
    merged.sort(key=lambda e: _id_order(e[0]), reverse=True)
    return merged[:count]


def _flat(fields: dict[bytes, bytes] | Sequence[bytes]) -> list[bytes]:
    if isinstance(fields, dict):
        return [x for kv in fields.items() for x in kv]
    return list(fields)


def _id_order(entry_id: bytes | str) -> tuple[int, int]:
    ms, _, seq = (entry_id.decode() if isinstance(entry_id, bytes) else entry_id).partition("-")
    return int(ms), int(seq)


def collect(outboxes: dict[str, dict[bytes, list[bytes]]], outbox: str,
            entries: Sequence[Entry]) -> None:
    """Add a write script's outbox entries (its reply's third item) to ``outboxes``."""
    if entries:
        known = outboxes.setdefault(outbox, {})
        for eid, flat in entries:
            known[eid] = flat
