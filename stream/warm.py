"""Warm start: the customers of newly assigned partitions, read from Redis in the background.

On every partition assignment (a start, a restart, a failover, a rebalance) a worker reads
the states and current segments of its partitions' customers from Redis, up to the cache
bound, before it learns or publishes a sample (:attr:`models.learning.UpdateSchedule.
warming`): page by page from each partition's index (``stream.partition_index``), or by a
``SCAN`` of every state while the index of an older deployment is not rebuilt yet. So the
learning sample and the re-scoring pass cover customers who send no new event, and a worker
that takes over keeps the segment ids.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable

from prometheus_client import Counter

from models.core import Segmenter
from models.features import CustomerState
from models.stitching import Links
from stream.errors import FatalError, reason
from stream.health import Health, retry
from stream.partition_index import Cursor, indexed, mark_if_empty, partition_states, scan_states
from stream.redis_io import RedisStore

log = logging.getLogger(__name__)


class Warmer:
    """Reads partitions' customer states into the core; a new assignment restarts it.

    Parameters
    ----------
    store, core
        Where states are read from, and the core that caches them.
    lock
        Held while states are added (not while a rebalance drops partitions).
    owned
        The partitions this worker owns now.
    limit
        Most states cached.
    """

    def __init__(self, store: RedisStore, core: Segmenter, lock: asyncio.Lock,
                 owned: Callable[[], set[int]], limit: int, health: Health,
                 errors: Counter) -> None:
        self.store, self.core, self.lock, self.owned = store, core, lock, owned
        self.limit, self.health, self.errors = limit, health, errors
        self._task: asyncio.Task[None] | None = None

    def start(self, partitions: set[int]) -> None:
        """Read these (newly assigned) partitions' customers; replaces a read under way."""
        self.cancel()
        self.core.schedule.warming = bool(partitions)
        if partitions:
            self._task = asyncio.create_task(self._warm(partitions))

    def cancel(self) -> None:
        """Stop reading (a new assignment, or the worker stops)."""
        if self._task is not None:
            self._task.cancel()

    async def _warm(self, partitions: set[int]) -> None:
        started = time.monotonic()
        try:
            if await retry(functools.partial(indexed, self.store), self.health, self.errors):
                added = 0
                for partition in sorted(partitions):
                    added += await self._warm_partition(partition)
            else:
                added = await self._scan(partitions)
            log.info("read %d customer states of partitions %s from Redis in %.1f s",
                     added, sorted(partitions), time.monotonic() - started)
        except FatalError as exc:  # a newer worker's state: the hot path stops at its event
            log.critical("warm start stopped: %s", reason(exc))
        finally:
            if self._task is asyncio.current_task():  # not replaced by a newer assignment
                self.core.schedule.warming = False

    async def _add(self, states: list[CustomerState], links: Links) -> int:
        async with self.lock:
            owned = self.owned()
            self.core.stitch.load({a: pr for a, pr in links.items() if pr[0] in owned})
            return self.core.warm([s for s in states if s.partition in owned])

    async def _warm_partition(self, partition: int) -> int:
        cursor, added = 0, 0
        while len(self.core.cache) < self.limit and partition in self.owned():
            links: Links = {}  # linked anonymous ids' records (identity stitching)
            cursor, states = await retry(functools.partial(
                partition_states, self.store, partition, cursor, links=links), self.health,
                self.errors)
            added += await self._add(states, links)
            if cursor == 0:
                break
        return added

    async def _scan(self, partitions: set[int]) -> int:
        """Every state in Redis, keeping these partitions' (no index yet)."""
        added, seen = 0, 0
        cursor: Cursor = 0
        while True:
            links: Links = {}
            cursor, states, n = await retry(functools.partial(
                scan_states, self.store, cursor, partitions, links=links), self.health,
                self.errors)
            if n and not seen:  # an empty store (a new deployment) needs no index
                log.warning("no partition index in Redis: warming up by a SCAN of every "
                            "customer state; run `segmenter reindex` once to read only this "
                            "worker's")
            added, seen = added + await self._add(states, links), seen + n
            if cursor == 0 or len(self.core.cache) >= self.limit:
                break
        if cursor == 0 and seen == 0:
            await retry(functools.partial(mark_if_empty, self.store), self.health,
                        self.errors)
        return added
