"""A new or changed audience evaluated over every stored customer, in the background.

When the definitions change or partitions are assigned (reason ``definition``), and when
event time enters a new UTC day (reason ``time``: window memberships end, as windows count
per day), each worker walks the customers of its partitions as Redis stores them (cached or
not, evicted, or written by a worker that has stopped): ``SSCAN`` pages of each partition's
index (``seg:partition:{N}``; a ``SCAN`` while an older deployment has none). Per page:

- under the pipeline lock, after the batches' writes landed: a cached customer is evaluated
  from the cache (one with changes not written yet is left to that write, which evaluates
  with the same definitions);
- the others are read from Redis (outside the lock) and evaluated there;
- each changed membership list is written by :data:`stream.write_lua.MEMBERS`, fenced on
  the state's ``partition:offset:`` head as read: a write of the customer since (a
  concurrent event) wins, and that customer is read and evaluated again.

Pages are bounded (:data:`PAGE`) and paced to ``rate`` customers a second, with the event
loop free between them (heartbeats, batches). Progress per worker (``done`` of ``total``,
the index sizes of the partitions to do) is reported on the model timer. A partition done
is recorded with the definitions' version (:attr:`~stream.keys.Keys.audience_evaluated`), so
a rebalance or a restart evaluates only the partitions not done with the current version.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import Counter

from models.core import Segmenter
from models.state import CustomerState
from models.windows import DAY_MS, moves_with_time
from stream.errors import FatalError, RetriableError, reason
from stream.health import Health, retry
from stream.partition_index import Cursor, indexed, scan_states
from stream.redis_io import RETRIABLE, RedisStore, script_status
from stream.write_lua import MEMBERS

log = logging.getLogger(__name__)

PAGE = 200
"""Customers per page: one ``SSCAN`` step, one read, one pipelined write."""

# A partition evaluated with definitions ARGV[2] (kept only if newer than what is there).
_DONE = """
if tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0') < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
return 1
"""


class AudiencePass:
    """Evaluates the current definitions over every stored customer of this worker.

    Parameters
    ----------
    store, core, lock
        Redis; the core (its cache and definitions); the pipeline lock.
    owned
        The partitions this worker owns now.
    written
        Settles the core: waits for the batches' Redis work in flight and assigns the
        customers waiting for a model update (call under ``lock``).
    rate
        Customers per second, at most (0: unpaced; re-scoring is off, but a new audience
        must still reach every stored customer).
    """

    def __init__(self, store: RedisStore, core: Segmenter, lock: asyncio.Lock,
                 owned: Callable[[], set[int]], written: Callable[[], Awaitable[None]],
                 rate: int, health: Health, errors: Counter) -> None:
        self.store, self.core, self.lock, self.owned = store, core, lock, owned
        self.written, self.rate = written, rate
        self.health, self.errors = health, errors
        self._members = store.r.register_script(MEMBERS)
        self._done_script = store.r.register_script(_DONE)
        self._task: asyncio.Task[None] | None = None
        self.version = 0
        self.done = self.total = self.day = 0  # day: of event time, the last time pass's
        self.reason = "definition"  # or "time": a pass after event time entered a new day
        self.finished, self.fatal = True, False
        self.changed = 0  # customers whose memberships this pass changed (for tests, logs)

    def start(self, version: int, reason: str = "definition") -> None:
        """Evaluate definitions ``version`` over the owned partitions not done with it;
        replaces a pass under way (new definitions, a new assignment). With ``reason``
        ``time``: over every owned partition, its progress not reported (the definitions'
        evaluation is done)."""
        self.cancel()
        self.reason = reason
        if reason == "definition":
            self.version, self.done, self.total, self.finished = version, 0, 0, False
            self.fatal = False
        if version:
            self._task = asyncio.create_task(self._run(version))

    def ensure(self, version: int, watermark_ms: int) -> None:
        """Start a pass of ``version`` unless it runs, finished or stopped on a fatal error
        (a pass that failed otherwise, or of older definitions, starts again); else, when
        event time (``watermark_ms``) entered a new UTC day and memberships can end with
        it (event windows: they count per day), a pass with reason ``time``."""
        task, day = self._task, watermark_ms // DAY_MS
        if version != self.version or (task is not None and task.done()
                                       and not self.finished and not self.fatal):
            self.start(version)
        elif day > self.day > 0 and not self.running and version and \
                moves_with_time(self.core.assigner.audiences):
            self.start(version, "time")
            self.day = day
        self.day = day if self.day <= 0 else self.day  # the first known day: no pass

    @property
    def running(self) -> bool:
        """A pass is under way (the time pass over cached customers waits for it)."""
        return self._task is not None and not self._task.done()

    def cancel(self) -> None:
        """Stop the pass (replaced, or the worker stops)."""
        if self._task is not None:
            self._task.cancel()

    def progress(self) -> tuple[int, int, int, bool] | None:
        """``(version, done, total, finished)`` of the current pass; None before any."""
        if not self.version:
            return None
        return self.version, min(self.done, self.total), self.total, self.finished

    async def _retry(self, call: Callable[[], Awaitable[Any]]) -> Any:
        return await retry(call, self.health, self.errors)

    async def _run(self, version: int) -> None:
        started, r, keys = time.monotonic(), self.store.r, self.store.keys
        try:
            todo = sorted(self.owned())
            if todo:
                done = await self._retry(functools.partial(
                    _hmget, r, keys.audience_evaluated, todo))
                todo = [p for p, v in zip(todo, done, strict=True)
                        if int(v or 0) < version or self.reason == "time"]
            use_index = await self._retry(functools.partial(indexed, self.store))
            if use_index and todo and self.reason == "definition":
                sizes = await self._retry(functools.partial(
                    _scards, r, [keys.partition(p) for p in todo]))
                self.total = sum(sizes)
            for p in todo if use_index else ():
                await self._partition(p, version)
            if not use_index and todo:
                await self._scan(set(todo), version)
            if self.reason == "definition":
                self.done, self.finished = self.total, True
            log.info("audiences version %d evaluated (%s) over the stored customers of "
                     "partitions %s in %.1f s (%d changed in all)", version, self.reason, todo,
                     time.monotonic() - started, self.changed)
        except FatalError as exc:  # a newer worker's state: this one must be replaced
            self.fatal = True
            log.critical("audience evaluation stopped: %s", reason(exc))
        except Exception:  # noqa: BLE001 - started again on the model timer (ensure)
            log.exception("audience evaluation of version %d failed; starting again", version)

    async def _partition(self, partition: int, version: int) -> None:
        cursor = 0
        while True:
            cursor, cids = await self._retry(functools.partial(self._sscan, partition, cursor))
            if not await self._page(partition, cids, version):
                return  # not ours any more, or the definitions changed: another pass follows
            if cursor == 0:
                break
        if self.reason == "definition":
            await self._retry(functools.partial(self._mark_done, partition, version))

    async def _scan(self, partitions: set[int], version: int) -> None:
        """No index (an older deployment): every state, keeping these partitions'; the
        total grows as they are found."""
        cursor: Cursor = 0
        while True:
            cursor, states, _ = await self._retry(functools.partial(
                scan_states, self.store, cursor, partitions, PAGE))
            for p in partitions:
                cids = [s.customer_id for s in states if s.partition == p]
                self.total += len(cids) if self.reason == "definition" else 0
                if cids and not await self._page(p, cids, version):
                    return
            if cursor == 0:
                break
        for p in partitions if self.reason == "definition" else ():
            await self._retry(functools.partial(self._mark_done, p, version))

    async def _page(self, partition: int, cids: list[str], version: int) -> bool:
        """Evaluate and write one page; False when the pass is to stop."""
        started, n = time.monotonic(), len(cids)
        for _ in range(3):  # customers written since they were read: evaluate again
            if not cids:
                break
            writes, remote = await self._cached(partition, cids, version)
            if writes is None:
                return False
            if remote:
                states = await self._retry(functools.partial(
                    _read, self.store, remote, partition))
                if self.core.assigner.audiences_version != version:
                    return False
                members = self.core.assigner.members
                writes += [_evaluated(st, members(st)) for st in states]
            writes = [w for w in writes if w[2] != w[0].audiences]
            cids = await self._retry(functools.partial(self._write, writes, version))
        self.done += n if self.reason == "definition" else 0
        # paced, and the event loop is free between pages
        pause = PAGE / self.rate - (time.monotonic() - started) if self.rate else 0.0
        await asyncio.sleep(max(0.0, pause))
        return True

    async def _cached(self, partition: int, cids: list[str], version: int) -> \
            tuple[list[_Evaluated] | None, list[str]]:
        """Memberships of the page's cached customers (under the lock, once the batches'
        writes landed: a cached state without changes to write is what Redis holds), and
        the ids not cached. None when the pass is to stop."""
        async with self.lock:
            await self.written()
            a, cache = self.core.assigner, self.core.cache
            if a.audiences_version != version or partition not in self.owned():
                return None, []
            writes: list[_Evaluated] = []
            remote: list[str] = []
            dirty, changed = cache.dirty, self.core.changed
            for cid in cids:
                st = cache.states.get(cid)
                if st is None:
                    remote.append(cid)
                elif cid not in dirty and cid not in changed:
                    writes.append(_evaluated(st, a.members(st)))  # else its write does
            return writes, remote

    async def _write(self, writes: list[_Evaluated], version: int) -> list[str]:
        """Write the memberships that changed; returns the customers written since they
        were read (to evaluate again)."""
        if not writes:
            return []
        store, now_ms = self.store, int(time.time() * 1000)
        k = store.keys
        try:
            results = await store.pipelined(self._members, 6, [
                (k.state(st.customer_id), k.customer(st.customer_id),
                 *store.agg_keys(st.customer_id, *k.audience_keys), head, now, version,
                 st.customer_id, now_ms, store.maxlen, self.reason, store.shard_arg(st.partition))
                for st, head, now in writes])
            await store.apply_outboxes([st.customer_id for st, _, _ in writes], results)
        except RETRIABLE as exc:
            raise RetriableError(f"Redis unavailable while writing memberships: {reason(exc)}") \
                from exc
        again = []
        for (st, head, now), reply in zip(writes, results, strict=True):
            res = script_status(reply)
            if res == -1:
                again.append(st.customer_id)
                continue
            self.changed += 1 if res else 0
            if _head(st) == head:  # a cached state not changed since: matches its hash
                st.audiences = now
        return again

    async def _sscan(self, partition: int, cursor: int) -> tuple[int, list[str]]:
        try:
            cursor, members = await self.store.r.sscan(self.store.keys.partition(partition),
                                                       cursor, count=PAGE)
        except RETRIABLE as exc:
            raise RetriableError(
                f"Redis unavailable while reading an index: {reason(exc)}") from exc
        return int(cursor), [m.decode() if isinstance(m, bytes) else m for m in members]

    async def _mark_done(self, partition: int, version: int) -> None:
        if partition in self.owned():
            try:
                await self._done_script(keys=[self.store.keys.audience_evaluated],
                                        args=[partition, version])
            except RETRIABLE as exc:
                raise RetriableError(f"Redis unavailable: {reason(exc)}") from exc


_Evaluated = tuple[CustomerState, bytes, str]
"""A customer's state, its ``partition:offset:`` head and memberships when evaluated (the
write is fenced on that head: a state the core changed since is not written over)."""


def _head(st: CustomerState) -> bytes:
    return b"%d:%d:" % (st.partition, st.offset)


def _evaluated(st: CustomerState, members: str) -> _Evaluated:
    return st, _head(st), members


async def _read(store: RedisStore, cids: list[str], partition: int) -> list[CustomerState]:
    try:
        return await store.read_states(cids, {partition})
    except RETRIABLE as exc:
        raise RetriableError(f"Redis unavailable while reading states: {reason(exc)}") from exc


async def _hmget(r: Any, key: str, fields: list[int]) -> list[Any]:
    try:
        return list(await r.hmget(key, fields))
    except RETRIABLE as exc:
        raise RetriableError(f"Redis unavailable: {reason(exc)}") from exc


async def _scards(r: Any, names: list[str]) -> list[int]:
    try:
        async with r.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.scard(name)
            return [int(n) for n in await pipe.execute()]
    except RETRIABLE as exc:
        raise RetriableError(f"Redis unavailable: {reason(exc)}") from exc
