"""The customer write scripts (Lua) of :mod:`stream.redis_io`: upsert, refresh, erase.

Each is one atomic call on one customer's keys, fenced by source partition/offset (the
``partition:offset:`` head of the state string; one function, ``fenced_set`` of :data:`AGG_LUA`,
does it for every script that writes a state). What a write moves in the aggregates that
every customer shares (segment sizes and changes, the RFM population and grid, audience
sizes and changes, the partition index) goes through the functions of :data:`AGG_LUA`:

- on one Redis (the last argument empty) they write the global keys in the same call, as
  they always did;
- in the sharded layout (``stream.shards``; the last argument is the events-topic partition
  the write belongs to) they only record what they would do; the script appends the record
  as one entry to the outbox stream of the customer's own slot (same slot, same atomic
  call) and returns the outbox's entries, which the writer then applies to the partition's
  shards exactly once (:class:`stream.shards.Shards`). Global keys are not declared then:
  their places in ``KEYS`` hold the outbox key, so every key is in the customer's slot.
"""

from __future__ import annotations

from stream.audiences_io import AUDIENCES_LUA
from stream.lease import FENCE_LUA
from stream.rfm_io import FORGET_LUA, TRAITS_LUA
from stream.stitch_lua import LINK_BODY, MERGE_BODY, MIRROR_LUA

AGG_LUA = """
local SHARDED, EFFECTS, OUT_P = false, {}, nil
-- mode 0: add n; 1: and drop the field at zero or below; 2: only if the field exists
local function agg_hincr(key, name, field, n, mode)
  if SHARDED then EFFECTS[#EFFECTS + 1] = {'h', name, field, n, mode} return end
  if redis.call('HINCRBY', key, field, n) <= 0 and mode == 1 then
    redis.call('HDEL', key, field)
  end
end
-- a message on a stream (trimmed ~maxlen) and the Pub/Sub channel of the same name
local function agg_xadd(key, name, maxlen, field, msg)
  if SHARDED then EFFECTS[#EFFECTS + 1] = {'x', name, field, msg} return end
  redis.call('XADD', key, 'MAXLEN', '~', maxlen, '*', field, msg)
  redis.call('PUBLISH', key, msg)
end
-- the partition index: a customer in (1) or out of (0) its partition's set
local function agg_index(key, member, add)
  if SHARDED then EFFECTS[#EFFECTS + 1] = {add == 1 and 's' or 'r', member} return end
  if add == 1 then redis.call('SADD', key, member) else redis.call('SREM', key, member) end
end
-- a customer's state, written unless it holds a later offset of the same source partition
-- (a replay, or a deposed writer's late write, must not undo a newer state); the head of the
-- state is 'partition:offset:'. False when fenced. With a base (the head of the writer's
-- last write, stream.written), nil unless the state still has that head: the traits are a
-- delta from what that write left, which a write since (or none at all) makes wrong.
local function fenced_set(key, partition, offset, value, base)
  local head = redis.call('GETRANGE', key, 0, 40)
  local p, o = string.match(head, '^(%d+):(%d+):')
  if p and tonumber(p) == tonumber(partition) and tonumber(o) > tonumber(offset) then
    return false
  end
  if base and base ~= '' and string.sub(head, 1, #base) ~= base then return nil end
  redis.call('SET', key, value)
  return true
end
-- a customer's explanation; none when it would repeat the segment's name ('='): the name
-- says it, and a typical hash is ~50 B smaller (models.records.explanation_arg)
local function put_explanation(hkey, value)
  if value == '=' then redis.call('HDEL', hkey, 'explanation')
  else redis.call('HSET', hkey, 'explanation', value) end
end
"""

# Lua run after a script's body (a function returning its reply): in the sharded layout,
# the recorded effects become one outbox entry and the reply gets the outbox's entries.
_HEAD = """
SHARDED = ARGV[#ARGV] ~= ''
OUT_P = ARGV[#ARGV]
local res = body()
"""
_TAIL = """
if not SHARDED then return res end
if type(res) ~= 'table' then res = {res, ''} end
local outbox = KEYS[#KEYS]
if #EFFECTS > 0 then
  redis.call('XADD', outbox, '*', 'p', OUT_P, 'e', cjson.encode(EFFECTS))
end
return {res[1], res[2], redis.call('XRANGE', outbox, '-', '+', 'COUNT', 200)}
"""


def customer_script(prelude: str, body: str, after: str = "") -> str:
    """A customer write script: ``body`` (Lua returning the reply ``res``; then ``after``)
    with the aggregate and identity stitching functions and, in the sharded layout, the
    outbox around it."""
    return (AGG_LUA + MIRROR_LUA + prelude + "local function body()\n" + body + "\nend\n"
            + _HEAD + after + _TAIL)


UPSERT = customer_script(TRAITS_LUA + AUDIENCES_LUA, """
local set = fenced_set(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[18])
if set == nil then return {-2, ''} end
if not set then return {-1, ''} end
agg_index(KEYS[11], ARGV[11], 1)
put_traits(KEYS[2], KEYS[5], KEYS[10], ARGV[14], ARGV[15], ARGV[18] ~= '')
put_audiences(KEYS[2], KEYS[6], KEYS[7], KEYS[8], KEYS[9], ARGV[16], ARGV[17], ARGV[11],
              ARGV[7], ARGV[9], ARGV[10], ARGV[12])
if ARGV[4] == '' then return {0, ''} end
local old = redis.call('HGET', KEYS[2], 'segment')
redis.call('HSET', KEYS[2], 'segment', ARGV[4], 'segment_name', ARGV[5],
           'model_version', ARGV[6], 'updated_at', ARGV[7], 'confidence', ARGV[8])
put_explanation(KEYS[2], ARGV[13])
if old == ARGV[4] then return {0, ''} end
if old then agg_hincr(KEYS[3], 'sizes', old, -1, 0) end
agg_hincr(KEYS[3], 'sizes', ARGV[4], 1, 0)
local msg = cjson.encode({customer_id = ARGV[11], ['from'] = old or cjson.null, to = ARGV[4],
  segment_name = ARGV[5], model_version = tonumber(ARGV[6]), event_id = ARGV[9],
  changed_at = tonumber(ARGV[7]), reason = ARGV[10]})
agg_xadd(KEYS[4], 'changes', ARGV[12], 'change', msg)
return {1, msg}
""", "if res[1] >= 0 then mirror_links(KEYS[2], ARGV[11]) end\n")
"""Write a customer's state and segment: ``{1, change}`` when the segment changed,
``{0, ''}`` when not, ``{-1, ''}`` when fenced (a newer write from the same partition),
``{-2, ''}`` when the traits are a delta (ARGV[18]: its base) from a state no longer stored
(nothing written: ``stream.written``).
The hash is copied to the mirrors of the customer's linked anonymous ids (one Redis)."""

# Right to erasure: forget the customer; a change with reason "delete" if it had a segment.
# The partition index entry goes too: its key is built from the partition in the state head
# (ARGV[5] is the index key up to the partition; same slot as the other global keys).
ERASE = customer_script(FORGET_LUA + AUDIENCES_LUA, """
local p = string.match(redis.call('GETRANGE', KEYS[1], 0, 40), '^(%d+):')
if p then
  OUT_P = p
  if SHARDED then agg_index('', ARGV[1], 0) else agg_index(ARGV[5] .. p .. '}', ARGV[1], 0) end
end
if erase_links(KEYS[2], ARGV[1]) then  -- a linked id: its customer keeps the history
  return {redis.call('DEL', KEYS[1], KEYS[2]), ''}
end
forget_rfm(KEYS[2], KEYS[5], KEYS[9])
forget_audiences(KEYS[2], KEYS[6], KEYS[7], KEYS[8], ARGV[1], ARGV[2], ARGV[3])
local old = redis.call('HGET', KEYS[2], 'segment')
local existed = redis.call('DEL', KEYS[1], KEYS[2])
if not old then return {existed, ''} end
agg_hincr(KEYS[3], 'sizes', old, -1, 0)
local msg = cjson.encode({customer_id = ARGV[1], ['from'] = old, to = cjson.null,
  segment_name = cjson.null, model_version = tonumber(ARGV[4]), event_id = cjson.null,
  changed_at = tonumber(ARGV[2]), reason = 'delete'})
agg_xadd(KEYS[4], 'changes', ARGV[3], 'change', msg)
return {existed, msg}
""")
"""Forget a customer: ``{existed, change}`` (change empty without a segment), with the
mirrors and link records of its linked anonymous ids (one Redis); a linked id alone loses
its mirror and link record, not its customer's history. In the
sharded layout the last argument is the partition whose shards take a customer without
a stored state (its own partition otherwise, from the state's head)."""

# The interval flush of customers whose segment did not change: state, confidence, version,
# and the segment's current name (a renamed segment reaches its customers' hashes).
REFRESH = customer_script(TRAITS_LUA + AUDIENCES_LUA, """
local set = fenced_set(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[18])
if set == nil then return -2 end
if not set then return -1 end
agg_index(KEYS[9], ARGV[14], 1)
put_traits(KEYS[2], KEYS[3], KEYS[8], ARGV[10], ARGV[11], ARGV[18] ~= '')
put_audiences(KEYS[2], KEYS[4], KEYS[5], KEYS[6], KEYS[7], ARGV[16], ARGV[17], ARGV[14],
              ARGV[7], ARGV[12], ARGV[13], ARGV[15])
if ARGV[4] ~= '' and redis.call('HGET', KEYS[2], 'segment') == ARGV[4] then
  redis.call('HSET', KEYS[2], 'confidence', ARGV[5], 'model_version', ARGV[6],
             'updated_at', ARGV[7], 'segment_name', ARGV[8])
  if ARGV[9] ~= '' then put_explanation(KEYS[2], ARGV[9]) end
end
return 0
""", "if res >= 0 then mirror_links(KEYS[2], ARGV[14]) end\n")
"""Write a customer's state whose segment did not change: 0, -1 when fenced, -2 when the
traits are a delta from a state no longer stored (as :data:`UPSERT`)."""

# The audience pass's write (stream.audience_pass): memberships only, if the state is still
# the one evaluated (its head as read), with sizes and one message per change.
MEMBERS = customer_script(AUDIENCES_LUA, """
local head = redis.call('GETRANGE', KEYS[1], 0, 40)
if string.sub(head, 1, #ARGV[1]) ~= ARGV[1] then return -1 end
return put_audiences(KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], ARGV[2], ARGV[3],
                     ARGV[4], ARGV[5], '', ARGV[7], ARGV[6])
""", "if res ~= -1 then mirror_links(KEYS[2], ARGV[4]) end\n")
"""Write a customer's memberships: the number of changes, or -1 when written since (the
mirrors of the customer's linked anonymous ids follow, as after any write)."""

LINK = customer_script("", LINK_BODY)
"""Identity stitching: a link record in place of an anonymous id's state (``{-1, ''}``:
fenced)."""

MERGE = customer_script(FORGET_LUA + AUDIENCES_LUA, MERGE_BODY)
"""Identity stitching: an anonymous id merged into its customer gets its mirror and change
message (``{1, change}``; ``{0, ''}``: done before). One Redis only: its keys span slots."""

# Publish a model snapshot unless a newer one is already there, or a newer trainer took the
# lease since the publisher's fencing token (ARGV[5], '' unfenced): the checkpoint, its
# version, every segment profile and the lifecycle messages.
PUBLISH = FENCE_LUA + """
if ARGV[5] ~= '' and fenced(KEYS[5], ARGV[5]) then return -1 end
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
if current >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[1])
local n = tonumber(ARGV[4])
for i = 1, n do
  redis.call('HSET', KEYS[3], ARGV[5 + 2 * i - 1], ARGV[5 + 2 * i])
end
for i = 5 + 2 * n + 1, #ARGV do
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], '*', 'lifecycle', ARGV[i])
end
return 1
"""
"""The model snapshot's script (``stream.redis_io.RedisStore.publish_model``)."""
