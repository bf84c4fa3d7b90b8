"""Warm start: the customers of newly assigned partitions, read from Redis in the background.

On every partition assignment (a start, a restart, a failover, a rebalance) a worker reads
the states and current segments of its partitions' customers from Redis, up to the cache
bound, before it learns or publishes a sample (:attr:`models.learning.UpdateSchedule.
warming`). So the learning sample and the re-scoring pass cover customers who send no new
event, and a worker that takes over keeps the segment ids.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable

from prometheus_client import Counter

from models.core import Segmenter
from stream.health import Health, retry
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
        core, cursor, added, started = self.core, 0, 0, time.monotonic()
        try:
            while True:
                cursor, states = await retry(functools.partial(
                    self.store.scan_states, cursor, partitions), self.health, self.errors)
                async with self.lock:
                    owned = self.owned()
                    added += core.warm([s for s in states if s.partition in owned])
                if cursor == 0 or len(core.cache) >= self.limit:
                    break
            log.info("read %d customer states of partitions %s from Redis in %.1f s",
                     added, sorted(partitions), time.monotonic() - started)
        finally:
            if self._task is asyncio.current_task():  # not replaced by a newer assignment
                core.schedule.warming = False
