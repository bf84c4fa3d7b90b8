"""Redis side of audiences (contract §2.3, §4): definitions shared by every worker, their
live sizes and the progress of their evaluation over existing customers.

- ``seg:audiences`` — hash, audience id -> the definition as given (JSON);
- ``seg:audiences-version`` — a counter bumped with every change of the definitions, in the
  same transaction: workers poll this one small key on the model timer (no round trip per
  event) and re-read the definitions only when it moved;
- ``seg:audience-sizes`` — hash, audience id -> members, kept by the customer write scripts
  (:mod:`stream.redis_io`) atomically with each membership;
- ``seg:audience-progress`` — hash, worker -> JSON ``{"version", "done", "total",
  "finished", "at"}``: each worker's evaluation of the current definitions over the
  stored customers of its partitions (``stream.audience_pass``), reported on the model
  timer; ``GET /audiences`` sums the reports on the current version of the workers heard
  from in the last :data:`PROGRESS_FRESH_S` seconds;
- ``seg:audience-evaluated`` — hash, partition -> the version evaluated over all of it.

A customer's memberships live in their hash (field ``audiences``, a JSON array of ids), so a
website reads them with the segment in one round trip.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from models.audiences import Audience, InvalidAudience, parse_audience
from models.windows import history
from stream.shards import partitions, sum_hashes

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from stream.keys import Keys


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


PROGRESS_FRESH_S = 10.0
"""A worker's progress report older than this is left out (the worker is gone)."""


class AudienceStore:
    """Definitions in Redis, as every worker sees them."""

    def __init__(self, client: aioredis.Redis, keys: Keys) -> None:
        self.r, self.keys = client, keys

    async def put(self, audience_id: str, body: Any) -> tuple[Audience, bool]:
        """Validate and store (create or replace); returns it and whether it is new.
        Raises :class:`InvalidAudience` naming the problem; nothing is stored then."""
        audience = parse_audience(audience_id, body)
        k = self.keys
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(k.audiences, audience_id, orjson.dumps(audience.definition))
            pipe.hsetnx(k.audience_sizes, audience_id, 0)
            pipe.incr(k.audiences_version)
            _, created, _ = await pipe.execute()
        await self._shards(lambda pipe, key: pipe.hsetnx(key, audience_id, 0))
        return audience, bool(created)

    async def _shards(self, op: Any) -> None:
        """Sharded layout: ``op(pipe, key)`` on every partition's audience sizes. A shard's
        field stands for the audience's existence there (an exit moves a size only while
        its field exists: no negative size for a deleted audience)."""
        names = [self.keys.shard("audience-sizes", p) for p in await partitions(self.r, self.keys)]
        if names:
            async with self.r.pipeline(transaction=False) as pipe:
                for key in names:
                    op(pipe, key)
                await pipe.execute()

    async def delete(self, audience_id: str) -> bool:
        """Forget an audience (its members leave it at their next write, with an ``exited``
        message each); False when it did not exist."""
        k = self.keys
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.hdel(k.audiences, audience_id)
            pipe.hdel(k.audience_sizes, audience_id)
            pipe.incr(k.audiences_version)
            existed, *_ = await pipe.execute()
        await self._shards(lambda pipe, key: pipe.hdel(key, audience_id))
        return bool(existed)

    async def version(self) -> int:
        """The definitions' version (0 before any)."""
        return int(await self.r.get(self.keys.audiences_version) or 0)

    async def load(self) -> tuple[int, list[Audience]]:
        """The version and every definition, read atomically. A definition that no longer
        parses (written by hand) is left out."""
        k = self.keys
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.get(k.audiences_version)
            pipe.hgetall(k.audiences)
            version, raw = await pipe.execute()
        out = []
        for aid, body in sorted(raw.items()):
            try:
                out.append(parse_audience(_text(aid), orjson.loads(body)))
            except (InvalidAudience, orjson.JSONDecodeError):
                continue
        return int(version or 0), out

    async def describe(self, audience_id: str | None = None) -> dict[str, dict[str, Any]]:
        """Audiences as ``GET /audiences`` gives them: id -> ``name``, ``definition``,
        ``size``, ``windows`` (what each event condition counts: ``history`` is
        ``complete`` or ``since_named``, ``models.windows.history``) and ``evaluation``
        (progress of the current definitions over the stored customers, or null)."""
        k = self.keys
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.hgetall(k.audiences)
            pipe.hgetall(k.audience_progress)
            pipe.get(k.audiences_version)
            defs, progress, version = await pipe.execute()
        sizes = await sum_hashes(self.r, k, "audience-sizes", k.audience_sizes)
        reports = {w: orjson.loads(p) for w, p in progress.items()}
        evaluation = _evaluation(list(reports.values()), int(version or 0))
        gone = [w for w, p in reports.items() if p.get("at", 0) < time.time() - 600]
        if gone:  # workers stopped long ago (each run reports under its own name)
            await self.r.hdel(k.audience_progress, *gone)
        out = {}
        for aid, body in sorted(defs.items()):
            aid = _text(aid)
            if audience_id is not None and aid != audience_id:
                continue
            definition = orjson.loads(body)
            out[aid] = {"id": aid, "name": definition.get("name"), "definition": definition,
                        "size": max(0, sizes.get(aid, 0)), "windows": _windows(aid, definition),
                        "evaluation": evaluation}
        return out

    async def report_progress(self, worker: str, version: int, done: int, total: int,
                              finished: bool) -> None:
        """This worker's evaluation of definitions ``version`` over its customers."""
        await self.r.hset(self.keys.audience_progress, worker, orjson.dumps({
            "version": version, "done": done, "total": total, "finished": finished,
            "at": time.time()}))

    async def sizes(self) -> dict[str, int]:
        """Members per audience."""
        raw = await sum_hashes(self.r, self.keys, "audience-sizes", self.keys.audience_sizes)
        return {a: max(0, n) for a, n in raw.items()}

    async def load_file(self, path: str) -> list[str]:
        """Store every audience of a JSON file (``SEGMENTER_AUDIENCES_FILE``: an object from
        id to definition); returns the ids. All are validated before any is stored; raises
        :class:`InvalidAudience` naming the file, the audience and the problem."""
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise InvalidAudience(f"{path}: cannot read a JSON object of audiences: {exc}") \
                from None
        if not isinstance(doc, dict):
            raise InvalidAudience(f"{path}: must be a JSON object from audience id to "
                                  "definition")
        for aid, body in doc.items():
            try:
                parse_audience(aid, body)
            except InvalidAudience as exc:
                raise InvalidAudience(f"{path}: audience {aid!r}: {exc}") from None
        current = await self.describe()
        for aid, body in doc.items():
            # unchanged: not stored again (that would start a re-evaluation at every start)
            if current.get(aid, {}).get("definition") != body:
                await self.put(aid, body)
        return list(doc)


def _evaluation(reports: list[dict[str, Any]], version: int) -> dict[str, Any] | None:
    """The workers' progress on definitions ``version`` (the current ones), summed over the
    fresh reports; 0 done of 0 until a worker reports on that version (a report on older
    definitions says nothing of these). None before any definition.

    >>> now = time.time()
    >>> _evaluation([{"version": 2, "done": 5, "total": 10, "finished": False, "at": now},
    ...              {"version": 1, "done": 1, "total": 1, "finished": True, "at": now}], 2)
    {'version': 2, 'done': 5, 'total': 10, 'finished': False, 'workers': 1}
    >>> _evaluation([{"version": 2, "done": 10, "total": 10, "finished": True, "at": now}], 3)
    {'version': 3, 'done': 0, 'total': 0, 'finished': False, 'workers': 0}
    """
    if not version:
        return None
    cut = time.time() - PROGRESS_FRESH_S
    mine = [p for p in reports if p.get("at", 0) >= cut and p.get("version") == version]
    return {"version": version, "done": sum(p["done"] for p in mine),
            "total": sum(p["total"] for p in mine),
            "finished": bool(mine) and all(p["finished"] for p in mine), "workers": len(mine)}


def _windows(audience_id: str, definition: Any) -> list[dict[str, Any]]:
    """Each event condition's window and what it counts (``models.windows.history``)."""
    try:
        audience = parse_audience(audience_id, definition)
    except InvalidAudience:
        return []
    return [{"event": t, "within_days": int(d) if d == int(d) else d, "history": history(t)}
            for t, d in sorted(audience.windows)]


# Lua, prepended to the customer write scripts (stream.redis_io): the customer's memberships
# (a JSON array in the hash field ``audiences``) replaced by those the writer evaluated, the
# sizes moved and one ``entered``/``exited`` message per difference appended to the stream
# (and published), in the same atomic, fenced call (through the ``agg_*`` functions of
# ``stream.write_lua``: global keys, or the sharded layout's outbox). A write evaluated with
# definitions older than Redis holds (a worker that has not polled yet) leaves memberships
# alone: it could announce exits from an audience it does not know of yet (the sharded
# layout checks the writer's polled version only: the global key is in another slot). A
# re-sent or replayed write finds the same list and changes nothing.
AUDIENCES_LUA = """
local function audience_msg(stream, maxlen, cid, a, change, at, event_id, reason)
  local msg = cjson.encode({customer_id = cid, audience = a, change = change,
    changed_at = tonumber(at), event_id = (event_id ~= '' and event_id) or cjson.null,
    reason = reason})
  agg_xadd(stream, 'audience-changes', maxlen, 'change', msg)
end
-- an exit: the size goes down unless the audience was deleted (its size with it)
local function audience_exit(sizes, defs, a)
  if SHARDED then agg_hincr(sizes, 'audience-sizes', a, -1, 2)
  elseif redis.call('HEXISTS', defs, a) == 1 then agg_hincr(sizes, 'audience-sizes', a, -1, 0)
  end
end
local function put_audiences(h, sizes, stream, version_key, defs, new, ver, cid, at,
                             event_id, reason, maxlen)
  if new == '' then return 0 end
  -- (sharded: the version is the writer's, polled; the global key is in another slot)
  if not SHARDED and tonumber(redis.call('GET', version_key) or '0') > tonumber(ver) then
    return 0
  end
  local old = redis.call('HGET', h, 'audiences')
  if old == new then return 0 end
  redis.call('HSET', h, 'audiences', new)
  local ok, was = pcall(cjson.decode, old or '[]')
  if not ok or type(was) ~= 'table' then was = {} end  -- written by hand: replaced
  local now, n = cjson.decode(new), 0
  local in_new, in_old = {}, {}
  for _, a in ipairs(now) do in_new[a] = true end
  for _, a in ipairs(was) do
    in_old[a] = true
    if not in_new[a] then
      audience_exit(sizes, defs, a)
      audience_msg(stream, maxlen, cid, a, 'exited', at, event_id, reason)
      n = n + 1
    end
  end
  for _, a in ipairs(now) do
    if not in_old[a] then
      agg_hincr(sizes, 'audience-sizes', a, 1, 0)
      audience_msg(stream, maxlen, cid, a, 'entered', at, event_id, reason)
      n = n + 1
    end
  end
  return n
end
local function forget_audiences(h, sizes, stream, defs, cid, at, maxlen)
  local ok, old = pcall(cjson.decode, redis.call('HGET', h, 'audiences') or '[]')
  if not ok or type(old) ~= 'table' then return end
  for _, a in ipairs(old) do
    audience_exit(sizes, defs, a)
    audience_msg(stream, maxlen, cid, a, 'exited', at, '', 'delete')
  end
end
"""
