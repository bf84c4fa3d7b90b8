"""Redis I/O: customer states and segments (SPEC §2), change stream, model checkpoints.

Every customer write is one Lua script call, atomic per customer: it fences stale writers
by source partition/offset (the ``partition:offset:`` head of the state string), writes the
state and the segment hash, keeps segment sizes,
and appends a change to the stream (and Pub/Sub) only when the segment really changed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from models.core import Assignment
from models.features import CustomerState
from stream.errors import RetriableError

_UPSERT = """
local p, o = string.match(redis.call('GETRANGE', KEYS[1], 0, 40), '^(%d+):(%d+):')
if p and tonumber(p) == tonumber(ARGV[1]) and tonumber(o) > tonumber(ARGV[2]) then
  return {-1, ''}
end
redis.call('SET', KEYS[1], ARGV[3])
if ARGV[4] == '' then return {0, ''} end
local old = redis.call('HGET', KEYS[2], 'segment')
redis.call('HSET', KEYS[2], 'segment', ARGV[4], 'segment_name', ARGV[5],
           'model_version', ARGV[6], 'updated_at', ARGV[7], 'confidence', ARGV[8],
           'explanation', ARGV[13])
if old == ARGV[4] then return {0, ''} end
if old then redis.call('HINCRBY', KEYS[3], old, -1) end
redis.call('HINCRBY', KEYS[3], ARGV[4], 1)
local msg = cjson.encode({customer_id = ARGV[11], ['from'] = old or cjson.null, to = ARGV[4],
  segment_name = ARGV[5], model_version = tonumber(ARGV[6]), event_id = ARGV[9],
  changed_at = tonumber(ARGV[7]), reason = ARGV[10]})
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[12], '*', 'change', msg)
redis.call('PUBLISH', KEYS[4], msg)
return {1, msg}
"""
# Right to erasure: forget the customer; a change with reason "delete" if it had a segment.
_ERASE = """
local old = redis.call('HGET', KEYS[2], 'segment')
local existed = redis.call('DEL', KEYS[1], KEYS[2])
if not old then return {existed, ''} end
redis.call('HINCRBY', KEYS[3], old, -1)
local msg = cjson.encode({customer_id = ARGV[1], ['from'] = old, to = cjson.null,
  segment_name = cjson.null, model_version = tonumber(ARGV[4]), event_id = cjson.null,
  changed_at = tonumber(ARGV[2]), reason = 'delete'})
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], '*', 'change', msg)
redis.call('PUBLISH', KEYS[4], msg)
return {existed, msg}
"""

# The interval flush of customers whose segment did not change: state, confidence, version,
# and the segment's current name (a renamed segment reaches its customers' hashes).
_REFRESH = """
local p, o = string.match(redis.call('GETRANGE', KEYS[1], 0, 40), '^(%d+):(%d+):')
if p and tonumber(p) == tonumber(ARGV[1]) and tonumber(o) > tonumber(ARGV[2]) then
  return -1
end
redis.call('SET', KEYS[1], ARGV[3])
if ARGV[4] ~= '' and redis.call('HGET', KEYS[2], 'segment') == ARGV[4] then
  redis.call('HSET', KEYS[2], 'confidence', ARGV[5], 'model_version', ARGV[6],
             'updated_at', ARGV[7], 'segment_name', ARGV[8])
end
return 0
"""
RETRIABLE = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)


@dataclass(frozen=True, slots=True)
class Keys:
    """Every Redis key, derived from the prefix; customer ids sit inside a hash tag."""

    prefix: str
    """Key prefix, ``seg:`` by default."""

    def customer(self, cid: str) -> str:
        """The SPEC §2 hash a website reads."""
        return f"{self.prefix}customer:{{{cid}}}"

    def state(self, cid: str) -> str:
        """Internal feature state of a customer: a string ``partition:offset:`` + the
        :meth:`~models.features.CustomerState.to_bytes` blob (a plain string, not a hash:
        half the memory)."""
        return f"{self.prefix}state:{{{cid}}}"

    @property
    def state_pattern(self) -> str:
        """``SCAN MATCH`` pattern of every :meth:`state` key (the prefix glob-escaped)."""
        return re.sub(r"([*?\[\]\\])", r"\\\1", self.prefix) + "state:{*}"

    @property
    def segments(self) -> str:
        """Hash of segment id -> JSON profile."""
        return f"{self.prefix}segments"

    @property
    def sizes(self) -> str:
        """Hash of segment id -> member count."""
        return f"{self.prefix}sizes"

    @property
    def changes(self) -> str:
        """Stream (and Pub/Sub channel) of segment changes."""
        return f"{self.prefix}changes"

    @property
    def model(self) -> str:
        """The latest model snapshot: a JSON checkpoint (see ``models.model``)."""
        return f"{self.prefix}model"

    @property
    def model_version(self) -> str:
        """The version of :attr:`model` (workers poll this small key)."""
        return f"{self.prefix}model-version"

    @property
    def learner(self) -> str:
        """Lease of the one worker that updates the shared model."""
        return f"{self.prefix}learner"

    @property
    def samples(self) -> str:
        """Hash of worker -> its latest sample of current customers, for the learner."""
        return f"{self.prefix}samples"

    @property
    def lifecycle(self) -> str:
        """Stream of segment lifecycle messages (born, split, merged, retired)."""
        return f"{self.prefix}lifecycle"


_CURRENT = ("segment", "model_version", "confidence")
"""Customer hash fields a loaded state takes its current segment from."""


def connect(url: str, max_connections: int = 16) -> aioredis.Redis:
    """A client on a blocking pool (waits for a free connection instead of failing)."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=10, socket_timeout=5,
        socket_connect_timeout=3, health_check_interval=30,
    )
    return aioredis.Redis(connection_pool=pool)


class RedisStore:
    """Reads and writes of one worker."""

    def __init__(self, client: aioredis.Redis, prefix: str, stream_maxlen: int) -> None:
        self.r = client
        self.keys = Keys(prefix)
        self.maxlen = stream_maxlen
        self._sha: dict[str, str] = {}

    async def _script(self, source: str) -> str:
        if source not in self._sha:
            self._sha[source] = await self.r.script_load(source)
        return self._sha[source]

    async def load_states(self, ids: set[str]) -> dict[str, CustomerState]:
        """States of these customers that Redis holds (unknown ones are absent), with their
        current segment (what stickiness and re-scoring start from)."""
        if not ids:
            return {}
        try:
            return {s.customer_id: s for s in await self._read(list(ids))}
        except RETRIABLE as exc:
            raise RetriableError(f"Redis unavailable while loading states: {exc}") from exc

    async def scan_states(self, cursor: int, partitions: set[int],
                          count: int = 1000) -> tuple[int, list[CustomerState]]:
        """One ``SCAN`` step over customer states: the next cursor (0 at the end) and the
        states of these source partitions among the keys it returned."""
        head = len(self.keys.state(""))
        try:
            cursor, keys = await self.r.scan(cursor, match=self.keys.state_pattern,
                                             count=count)
            cids = [(k.decode() if isinstance(k, bytes) else k)[head - 1:-1] for k in keys]
            return int(cursor), await self._read(cids, partitions)
        except RETRIABLE as exc:
            raise RetriableError(f"Redis unavailable while scanning states: {exc}") from exc

    async def _read(self, cids: list[str],
                    partitions: set[int] | None = None) -> list[CustomerState]:
        """States with their current segment; with ``partitions``, only those whose last
        event came from one of them. Hashes are read only for the states found: most cache
        misses are new customers, who cost one ``GET`` instead of two commands."""
        async with self.r.pipeline(transaction=False) as pipe:
            for cid in cids:
                pipe.get(self.keys.state(cid))
            got = await pipe.execute()
        kept = [(cid, raw) for cid, raw in zip(cids, got, strict=True) if raw and (
            partitions is None or int(raw.split(b":", 1)[0]) in partitions)]
        if not kept:
            return []
        async with self.r.pipeline(transaction=False) as pipe:
            for cid, _ in kept:
                pipe.hmget(self.keys.customer(cid), *_CURRENT)
            hashes = await pipe.execute()
        out = []
        for (cid, raw), (segment, version, confidence) in zip(kept, hashes, strict=True):
            _, _, blob = raw.split(b":", 2)
            st = CustomerState.from_bytes(cid, blob)
            if segment:
                st.segment = segment.decode()
                st.model_version, st.confidence = int(version), float(confidence)
            out.append(st)
        return out

    async def write(self, assignments: list[Assignment], now_ms: int,
                    refresh: bool = False) -> tuple[list[bytes], int]:
        """Write every assignment; return the change messages and how many were fenced.

        With ``refresh`` the segment is known not to have changed: only the state, the
        confidence, the model version and ``updated_at`` are written (a lighter script).
        """
        if not assignments:
            return [], 0
        k = self.keys
        source = _REFRESH if refresh else _UPSERT
        try:
            for _ in range(2):
                sha = await self._script(source)
                async with self.r.pipeline(transaction=False) as pipe:
                    for a in assignments:
                        cid = a.customer_id
                        if refresh:
                            pipe.evalsha(sha, 2, k.state(cid), k.customer(cid), a.partition,
                                         a.offset, b"%d:%d:%s" % (a.partition, a.offset,
                                                                  a.state),
                                         a.segment, a.confidence,
                                         a.model_version, now_ms, a.segment_name)
                        else:
                            pipe.evalsha(
                                sha, 4, k.state(cid), k.customer(cid), k.sizes, k.changes,
                                a.partition, a.offset,
                                b"%d:%d:%s" % (a.partition, a.offset, a.state),
                                a.segment, a.segment_name,
                                a.model_version, now_ms, a.confidence, a.event_id, a.reason,
                                cid, self.maxlen, a.explanation,
                            )
                    results = await pipe.execute(raise_on_error=False)
                errors = [r for r in results if isinstance(r, Exception)]
                if errors and all(isinstance(e, NoScriptError) for e in errors):
                    # Redis restarted and lost its script cache: load and write again
                    # (the writes are idempotent, so repeating the ones that passed is safe).
                    self._sha.clear()
                    continue
                if errors:
                    if isinstance(errors[0], RETRIABLE):
                        raise errors[0]
                    raise ResponseError(f"customer write failed: {errors[0]}")
                break
        except RETRIABLE as exc:
            raise RetriableError(f"Redis unavailable while writing: {exc}") from exc
        if refresh:
            return [], sum(1 for r in results if r == -1)
        changes = [r[1] for r in results if r[0] == 1]
        fenced = sum(1 for r in results if r[0] == -1)
        return changes, fenced

    async def erase(self, ids: list[str], now_ms: int, model_version: int) -> int:
        """Forget these customers; return how many had anything stored."""
        if not ids:
            return 0
        k = self.keys
        try:
            sha = await self._script(_ERASE)
            async with self.r.pipeline(transaction=False) as pipe:
                for cid in ids:
                    pipe.evalsha(sha, 4, k.state(cid), k.customer(cid), k.sizes, k.changes,
                                 cid, now_ms, self.maxlen, model_version)
                results = await pipe.execute(raise_on_error=False)
        except RETRIABLE as exc:
            raise RetriableError(f"Redis unavailable while erasing: {exc}") from exc
        for res in results:
            if isinstance(res, NoScriptError):
                self._sha.clear()
                return await self.erase(ids, now_ms, model_version)
            if isinstance(res, Exception):
                raise ResponseError(f"erase failed: {res}")
        return sum(1 for res in results if res[0])

    async def customers(self, ids: list[str]) -> list[dict[str, str] | None]:
        """SPEC §2 hashes of several customers in one round trip."""
        async with self.r.pipeline(transaction=False) as pipe:
            for cid in ids:
                pipe.hgetall(self.keys.customer(cid))
            raw = await pipe.execute()
        return [{_text(k): _text(v) for k, v in h.items()} if h else None for h in raw]

    async def sizes(self) -> dict[str, int]:
        """Members per segment."""
        raw = await self.r.hgetall(self.keys.sizes)
        return {_text(k): int(v) for k, v in raw.items()}

    async def profiles(self) -> dict[str, dict[str, Any]]:
        """Segment profiles with live sizes."""
        raw = await self.r.hgetall(self.keys.segments)
        sizes = await self.sizes()
        out = {}
        for k, v in raw.items():
            p = json.loads(v)
            p["size"] = sizes.get(p["id"], 0)
            out[_text(k)] = p
        return out

    async def customer(self, cid: str) -> dict[str, str] | None:
        """The SPEC §2 hash of a customer, or None."""
        raw = await self.r.hgetall(self.keys.customer(cid))
        return {_text(k): _text(v) for k, v in raw.items()} if raw else None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
