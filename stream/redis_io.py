"""Redis I/O: customer states and segments (contract §2), change stream, model snapshots.

Every customer write is one Lua script call, atomic per customer: it fences stale writers
by source partition/offset (the ``partition:offset:`` head of the state string), writes the
state, its partition's index (``stream.partition_index``) and the segment hash, keeps segment
sizes, and appends a change to the stream (and Pub/Sub) only when the segment really changed.
On a Redis Cluster (the sharded layout, ``stream.shards``) that script moves no global key:
it leaves the moves in its slot's outbox, which :class:`~stream.shards.Shards` applies to
the partition's shards, once, before the caller commits. The scripts: ``stream.write_lua``.

Scripts run by their SHA (``EVALSHA``), a batch in one round trip (:meth:`RedisStore.pipelined`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any, cast

import orjson
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from models.core import Assignment
from models.features import CustomerState
from models.records import explanation_arg
from models.stitching import RECORD_FRAME, Links, take_links
from models.traits import TRAIT_NAMES, from_fields
from stream.errors import RetriableError, reason
from stream.keys import Keys, decode_state, load_profile
from stream.resp import evalsha_many, run_many
from stream.shards import Shards, collect, sum_hashes
from stream.write_lua import ERASE, PUBLISH, REFRESH, UPSERT
from stream.written import STALE, WrittenTraits

log = logging.getLogger(__name__)
RETRIABLE = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)


_CURRENT = ("segment", "model_version", "confidence")
"""Customer hash fields a loaded state takes its current segment from."""
_HMGET = (*_CURRENT, "rfm", "audiences", *TRAIT_NAMES)  # what a loaded state reads


def connect(url: str, max_connections: int = 16, cluster: bool = False,
            **options: Any) -> aioredis.Redis:
    """A client on a blocking pool (waits for a free connection instead of failing); with
    ``cluster``, a Redis Cluster client (``url`` names any node; the client finds the
    others and routes each command by its key's slot). ``options``: credentials and TLS
    files (``stream.credentials.redis_options``), for every node of a cluster too."""
    if cluster:
        client: Any = RedisCluster.from_url(
            url, max_connections=max_connections * 4, socket_timeout=5,
            socket_connect_timeout=3, health_check_interval=30, **options)
        return cast(aioredis.Redis, client)
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=10, socket_timeout=5,
        socket_connect_timeout=3, health_check_interval=30, **options,
    )
    return aioredis.Redis(connection_pool=pool)


class RedisStore:
    """Reads and writes of one worker."""

    def __init__(self, client: aioredis.Redis, prefix: str, stream_maxlen: int,
                 remember: int = 200_000) -> None:
        self.r = client
        self.written = WrittenTraits(remember)
        """The traits last written per customer (``remember`` customers at most)."""
        self.keys = Keys(prefix, cluster=isinstance(client, RedisCluster))
        self.shards = Shards(client, self.keys, stream_maxlen) if self.keys.cluster else None
        """The per-partition aggregates of the sharded layout (None on one Redis)."""
        self.maxlen = stream_maxlen
        self._upsert = client.register_script(UPSERT)
        self._refresh = client.register_script(REFRESH)
        self._erase = client.register_script(ERASE)
        self._publish = client.register_script(PUBLISH)

    async def pipelined(self, script: AsyncScript, nkeys: int,
                         calls: Sequence[Sequence[Any]]) -> list[Any]:
        """Run ``script`` once per call (``nkeys`` keys, then arguments) in one pipeline,
        results (or errors) in call order: plain ``EVALSHA``, as ``script(client=pipe)`` would
        ask ``SCRIPT EXISTS`` first, a second round trip per batch. Calls a server without the
        script answers ``NOSCRIPT`` (restart, failover) are loaded once and sent again."""
        results = await self._evalsha(script, nkeys, calls)
        missing = [i for i, res in enumerate(results) if isinstance(res, NoScriptError)]
        if missing:
            await self.r.script_load(script.script)
            again = await self._evalsha(script, nkeys, [calls[i] for i in missing])
            for i, res in zip(missing, again, strict=True):
                results[i] = res
        for res in results:
            if isinstance(res, RETRIABLE):
                raise res
            if isinstance(res, Exception):
                raise ResponseError(f"Redis script failed: {res}") from res
        return results

    async def _evalsha(self, script: AsyncScript, nkeys: int,
                       calls: Sequence[Sequence[Any]]) -> list[Any]:
        if not isinstance(self.r, RedisCluster):  # one Redis: packed in C (stream.resp)
            return await evalsha_many(self.r, script.sha, nkeys, calls)
        async with self.r.pipeline(transaction=False) as pipe:
            for call in calls:  # not pipe.evalsha: a cluster pipeline refuses that method,
                # though it routes the command itself by its first key's slot
                pipe.execute_command("EVALSHA", script.sha, nkeys, *call)
            return list(await pipe.execute(raise_on_error=False))

    async def load_states(self, ids: set[str], links: Links | None = None
                          ) -> dict[str, CustomerState]:
        """States of these customers that Redis holds (unknown ones are absent), with their
        current segment (what stickiness and re-scoring start from); link records of
        linked anonymous ids go to ``links``."""
        if not ids:
            return {}
        try:
            return {s.customer_id: s for s in await self.read_states(list(ids), links=links)}
        except RETRIABLE as exc:
            raise RetriableError(f"Redis unavailable while loading states: {reason(exc)}") from exc

    async def read_states(self, cids: list[str], partitions: set[int] | None = None,
                          links: Links | None = None) -> list[CustomerState]:
        """States with their current segment; with ``partitions``, only those whose last
        event came from one of them; link records (identity stitching) go to ``links``
        (by id: partition, record), not returned. Hashes are read only for the states
        found: most cache misses are new customers, one ``GET`` instead of two commands."""
        got = await run_many(self.r, [("GET", self.keys.state(c)) for c in cids])
        kept = [(cid, raw) for cid, raw in zip(cids, got, strict=True) if raw and (
            partitions is None or int(raw.split(b":", 1)[0]) in partitions)]
        if any(RECORD_FRAME in raw[:48] for _, raw in kept):  # rare: one pass more
            kept = take_links(kept, links if links is not None else {})
        if not kept:
            return []
        hashes = await run_many(self.r, [("HMGET", self.keys.customer(cid), *_HMGET)
                                         for cid, _ in kept])
        out = []
        for (cid, raw), (segment, version, confidence, rfm, aud, *tr) in zip(
                kept, hashes, strict=True):
            st = decode_state(cid, raw.split(b":", 2)[2], from_fields(
                {n: v.decode() for n, v in zip(TRAIT_NAMES, tr, strict=True) if v}))
            st.rfm = rfm.decode() if rfm else ""
            st.audiences = aud.decode() if aud else ""
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
        Traits go as the fields changed since this worker's last write
        (:mod:`stream.written`); the writes whose base was not stored go again in full.
        """
        if not assignments:
            return [], 0
        call = functools.partial(self._refresh_call if refresh else self._upsert_call, now_ms)
        script, nkeys = (self._refresh, 9) if refresh else (self._upsert, 11)
        sent = self.written.send
        try:
            results = await self.pipelined(script, nkeys, [call(a, *sent(a))
                                                           for a in assignments])
            stale = [i for i, res in enumerate(results) if script_status(res) == STALE]
            if stale:  # written since this worker's last write: every field
                again = await self.pipelined(script, nkeys, [
                    call(assignments[i], assignments[i].traits, b"") for i in stale])
                for i, res in zip(stale, again, strict=True):
                    results[i] = res
            self.written.settle(assignments, [script_status(res) for res in results])
            await self.apply_outboxes(assignments, results)
        except BaseException as exc:  # (a cancellation too) some may have been written
            self.written.forget()  # but none is known to be
            if isinstance(exc, RETRIABLE):
                raise RetriableError(f"Redis unavailable while writing: {reason(exc)}") from exc
            raise
        fenced = sum(1 for r in results if script_status(r) == -1)
        return ([] if refresh else [r[1] for r in results if r[0] == 1]), fenced

    def _refresh_call(self, now_ms: int, a: Assignment, traits: bytes,
                      base: bytes) -> tuple[Any, ...]:
        k = self.keys
        return (k.state(a.customer_id), k.customer(a.customer_id), *self.agg_keys(
            a.customer_id, k.rfm, *k.audience_keys, k.rfm_grid, k.partition(a.partition)),
            a.partition, a.offset, b"%d:%d:%s" % (a.partition, a.offset, a.state), a.segment,
            a.confidence, a.model_version, now_ms, a.segment_name, explanation_arg(a), traits,
            a.rfm, a.event_id, a.reason, a.customer_id, self.maxlen, a.audiences,
            a.audiences_version, base, self.shard_arg(a.partition))

    def _upsert_call(self, now_ms: int, a: Assignment, traits: bytes,
                     base: bytes) -> tuple[Any, ...]:
        k = self.keys
        return (k.state(a.customer_id), k.customer(a.customer_id), *self.agg_keys(
            a.customer_id, k.sizes, k.changes, k.rfm, *k.audience_keys, k.rfm_grid,
            k.partition(a.partition)), a.partition, a.offset,
            b"%d:%d:%s" % (a.partition, a.offset, a.state), a.segment, a.segment_name,
            a.model_version, now_ms, a.confidence, a.event_id, a.reason, a.customer_id,
            self.maxlen, explanation_arg(a), traits, a.rfm, a.audiences, a.audiences_version,
            base, self.shard_arg(a.partition))

    def agg_keys(self, cid: str, *names: str) -> tuple[str, ...]:
        """The aggregate keys of a customer write: the global ones on one Redis; in the
        sharded layout the customer slot's outbox in their places (``stream.write_lua``)."""
        return tuple(names) if self.shards is None else (self.keys.outbox(cid),) * len(names)

    def shard_arg(self, partition: int) -> bytes:
        """A write script's last argument: empty on one Redis, else the partition whose
        shards take what the write moves."""
        return b"" if self.shards is None else b"%d" % partition

    async def apply_outboxes(self, owners: Sequence[Assignment | str],
                              results: list[Any]) -> None:
        """Sharded layout: apply the outbox entries the write scripts returned (step 2 of
        ``stream.shards``), before the caller commits anything."""
        if self.shards is None:
            return
        outboxes: dict[str, dict[bytes, list[bytes]]] = {}
        for owner, res in zip(owners, results, strict=True):
            cid = owner if isinstance(owner, str) else owner.customer_id
            collect(outboxes, self.keys.outbox(cid), res[2])
        await self.shards.apply(outboxes)

    async def erase(self, ids: list[str], now_ms: int, model_version: int) -> int:
        """Forget these customers and the shop's log-in claims of them; how many existed."""
        k = self.keys
        if not ids:
            return 0
        try:
            results = await self.pipelined(self._erase, 9, [
                (k.state(cid), k.customer(cid), *self.agg_keys(
                    cid, k.sizes, k.changes, k.rfm, k.audience_sizes, k.audience_changes,
                    k.audiences, k.rfm_grid), cid, now_ms, self.maxlen, model_version,
                 k.partition("")[:-1], self.shard_arg(0)) for cid in ids])
            await self.apply_outboxes(ids, results)
            async with self.r.pipeline(transaction=False) as pipe:  # each names the other id
                for cid in ids:
                    pipe.delete(k.shop_claim(cid))
                await pipe.execute()
        except RETRIABLE as exc:
            raise RetriableError(f"Redis unavailable while erasing: {reason(exc)}") from exc
        return sum(1 for res in results if res[0])

    async def publish_model(self, version: int, checkpoint: str | bytes,
                            profiles: dict[str, dict[str, Any]],
                            lifecycle: list[dict[str, Any]],
                            fence: tuple[str, int] | None = None) -> bool:
        """Store a model version atomically: its checkpoint (:attr:`Keys.model`), the
        version (:attr:`Keys.model_version`), every segment profile (:attr:`Keys.segments`)
        and the lifecycle messages (:attr:`Keys.lifecycle`). False, and nothing written,
        when this version or a newer one is there already, or when ``fence`` (the training
        lease's fencing key and the publisher's token, ``stream.lease``) shows a newer
        trainer: a deposed trainer cannot win. Raises :class:`RetriableError` when Redis is
        unreachable.
        """
        k = self.keys
        fence_key, token = fence if fence is not None else (k.model_version, "")
        args: list[Any] = [version, checkpoint, self.maxlen, len(profiles), token]
        for sid, profile in profiles.items():
            args += [sid, orjson.dumps(profile)]
        args += [orjson.dumps(e) for e in lifecycle]
        try:
            done = await self._publish(
                keys=[k.model, k.model_version, k.segments, k.lifecycle, fence_key], args=args)
            if done == -1:
                log.warning("model version %d not published: a newer trainer holds the lease",
                            version)
            return done == 1
        except RETRIABLE as exc:
            raise RetriableError(
                f"Redis unavailable while publishing the model: {reason(exc)}") from exc

    async def customers(self, ids: list[str]) -> list[dict[str, str] | None]:
        """contract §2 hashes of several customers in one round trip."""
        async with self.r.pipeline(transaction=False) as pipe:
            for cid in ids:
                pipe.hgetall(self.keys.customer(cid))
            raw = await pipe.execute()
        return [{_text(k): _text(v) for k, v in h.items()} if h else None for h in raw]

    async def sizes(self) -> dict[str, int]:
        """Members per segment (sharded layout: summed over the shards)."""
        return await sum_hashes(self.r, self.keys, "sizes", self.keys.sizes)

    async def profiles(self) -> dict[str, dict[str, Any]]:
        """Segment profiles with live sizes."""
        raw = await self.r.hgetall(self.keys.segments)
        sizes = await self.sizes()
        out = {}
        for k, v in raw.items():
            p = load_profile(v)
            p["size"] = sizes.get(p["id"], 0)
            out[_text(k)] = p
        return out

    async def stored(self, cid: str) -> bool:
        """Whether Redis holds anything of this customer (its hash or its state)."""
        k = self.keys
        return bool(await self.r.exists(k.customer(cid), k.state(cid)))

    async def customer(self, cid: str) -> dict[str, str] | None:
        """The contract §2 hash of a customer, or None."""
        raw = await self.r.hgetall(self.keys.customer(cid))
        return {_text(k): _text(v) for k, v in raw.items()} if raw else None


def script_status(res: Any) -> Any:
    """A refresh script's status: its reply, or the first item of the sharded layout's."""
    return res[0] if isinstance(res, list) else res


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
