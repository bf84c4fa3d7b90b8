"""Lua of identity stitching's Redis writes (README "Identity stitching", steps 5-7), used by
the customer write scripts (:mod:`stream.write_lua`) and by :mod:`stream.stitch_io`.

A linked anonymous id A's hash, ``seg:customer:{A}``, is a *mirror*: a copy of its
customer C's hash plus ``customer_id`` = C, rewritten by every write of C in the same script
(one round trip for a page reading A, as for any customer). C's linked ids are the hash
``seg:ids:{C}`` (id -> link event time). Mirrors sit in other slots than C's keys: on Redis
Cluster (the sharded layout) these functions do nothing, and lookups by A are not linked
yet (the worker warns once).

Every function derives the other keys from the customer hash key it is given, whose tail
is ``customer:{<id>}``: the prefix is what comes before.
"""

from __future__ import annotations

MIRROR_LUA = """
local function stitch_prefix(hkey, cid)
  return string.sub(hkey, 1, #hkey - #cid - 11)
end
-- rewrite the mirrors of cid's linked ids from its hash (after a write of cid)
local function mirror_links(hkey, cid)
  if SHARDED then return end
  local prefix = stitch_prefix(hkey, cid)
  local ids = redis.call('HKEYS', prefix .. 'ids:{' .. cid .. '}')
  if #ids == 0 then return end
  local h = redis.call('HGETALL', hkey)
  for _, a in ipairs(ids) do
    local m = prefix .. 'customer:{' .. a .. '}'
    redis.call('DEL', m)
    if #h > 0 then redis.call('HSET', m, unpack(h)) end
    redis.call('HSET', m, 'customer_id', cid)
  end
end
-- erasure of cid: its linked ids' mirrors and link records go too. Erasure of a linked id
-- (its hash is a mirror): it leaves its customer's list. True when cid was such an id.
local function erase_links(hkey, cid)
  if SHARDED then return false end
  local prefix = stitch_prefix(hkey, cid)
  local into = redis.call('HGET', hkey, 'customer_id')
  if into and into ~= cid then
    redis.call('HDEL', prefix .. 'ids:{' .. into .. '}', cid)
    return true
  end
  local idk = prefix .. 'ids:{' .. cid .. '}'
  for _, a in ipairs(redis.call('HKEYS', idk)) do
    redis.call('DEL', prefix .. 'customer:{' .. a .. '}', prefix .. 'state:{' .. a .. '}')
  end
  redis.call('DEL', idk)
  return false
end
"""
"""Functions ``mirror_links`` and ``erase_links`` (after ``AGG_LUA``: they read SHARDED)."""

LINK_BODY = """
if not fenced_set(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return {-1, ''} end
agg_index(KEYS[2], ARGV[4], 1)
return {0, ''}
"""
"""Write a link record in place of an anonymous id's state, fenced like a state write.
KEYS: state, partition index; ARGV: partition, offset, ``partition:offset:record``, id,
shard."""

UNLINK_BODY = """
local v = redis.call('GET', KEYS[1])
local head = v and string.match(v, '^%d+:%d+:')
if not head or string.sub(v, #head + 1, #head + #ARGV[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""
"""Delete a link record if it still links to the customer named (ARGV[1]: the head of such
a record, ``\\x01LNK["<customer>",``); 1 when deleted. KEYS: the anonymous id's state."""

MERGE_BODY = """
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then return {0, ''} end
local old = redis.call('HGET', KEYS[1], 'segment')
local into = redis.call('HGET', KEYS[1], 'customer_id')
if into then
  redis.call('HDEL', stitch_prefix(KEYS[2], ARGV[2]) .. 'ids:{' .. into .. '}', ARGV[1])
else
  forget_rfm(KEYS[1], KEYS[6], KEYS[10])
  forget_audiences(KEYS[1], KEYS[7], KEYS[8], KEYS[9], ARGV[1], ARGV[4], ARGV[5])
  if old then agg_hincr(KEYS[4], 'sizes', old, -1, 0) end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[6])
local bound, dropped = tonumber(ARGV[7]), {}
while redis.call('HLEN', KEYS[3]) > bound do
  local all, oldest, at = redis.call('HGETALL', KEYS[3]), nil, nil
  for i = 1, #all, 2 do
    local t = tonumber(all[i + 1])
    if at == nil or t < at or (t == at and all[i] < oldest) then
      oldest, at = all[i], t
    end
  end
  redis.call('HDEL', KEYS[3], oldest)
  redis.call('DEL', stitch_prefix(KEYS[2], ARGV[2]) .. 'customer:{' .. oldest .. '}')
  dropped[#dropped + 1] = oldest
end
mirror_links(KEYS[2], ARGV[2])
local h = redis.call('HMGET', KEYS[2], 'segment', 'segment_name', 'model_version')
local msg = cjson.encode({customer_id = ARGV[1], ['from'] = old or cjson.null,
  to = h[1] or cjson.null, segment_name = h[2] or cjson.null,
  model_version = tonumber(h[3] or '0'), event_id = ARGV[3],
  changed_at = tonumber(ARGV[4]), reason = 'merge', merged_into = ARGV[2]})
agg_xadd(KEYS[5], 'changes', ARGV[5], 'change', msg)
return {1, msg, unpack(dropped)}
"""
"""After a merge into customer C was written: anonymous id A leaves the aggregates (its
segment's size, RFM, audiences), joins ``seg:ids:{C}`` (the oldest beyond the bound loses
its mirror: ``{1, change, <dropped ids>...}``), gets its mirror, and one change message
with reason ``merge`` says so; once only (A already in the list: ``{0, ''}``). KEYS: A's
hash, C's hash, C's ids, sizes, changes, rfm, audience sizes, audience changes, audiences,
rfm grid; ARGV: A, C, link event id, now, stream maxlen, link event time, bound, shard
(empty: one Redis only)."""
