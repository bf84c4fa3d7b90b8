"""Samples of current customers that workers publish for the trainer (``stream.modelsync``).

Each worker's latest sample is its own key, ``seg:sample:{<worker>}``, written with an
expiry of :data:`SAMPLE_STALE_S`: republished every few seconds while the worker lives,
gone a minute after it stops (kill -9 included). A sorted set, ``seg:sample-index``
(worker -> when its sample was published, epoch ms), lets the trainer find them without a
``SCAN`` and read only the samples that changed since it last took them; its stale members
are pruned by the trainer and the set expires with the last worker.

Versions before kept every sample in one hash, ``seg:samples``, never pruned; the trainer
deletes it when it takes the lease.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import redis.asyncio as aioredis

from stream.keys import Keys

SAMPLE_STALE_S = 60.0
"""A worker's sample older than this no longer counts, and expires (the worker is gone)."""


class SampleBoard:
    """Publishes this worker's sample; as the trainer, takes the others' new ones."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, me: str) -> None:
        self.r, self.keys, self.me = redis, keys, me
        self._taken: dict[str, float] = {}  # worker -> publication time of the sample taken
        self._events: dict[str, int] = {}  # worker -> its event count at that sample

    async def publish(self, population: int, events: int, rows: list[list[float]]) -> None:
        """Store this worker's sample (one round trip): its key with a fresh expiry, its
        entry in the index, and the index's own expiry."""
        now = time.time()
        entry = {"population": population, "events": events, "at": now,
                 "rows": [[round(v, 5) for v in r] for r in rows]}
        ttl_ms = int(SAMPLE_STALE_S * 1000)
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.sample(self.me), orjson.dumps(entry), px=ttl_ms)
            pipe.zadd(self.keys.sample_index, {self.me: int(now * 1000)})
            pipe.pexpire(self.keys.sample_index, ttl_ms)
            await pipe.execute()

    async def forget_legacy(self) -> None:
        """Delete the single hash of samples older versions kept (it only grows)."""
        await self.r.unlink(self.keys.samples)

    async def take(self) -> tuple[dict[str, tuple[int, list[list[float]], int]], set[str]]:
        """The other workers' samples published since last taken, each as (population,
        rows, events since the previous one), and the workers gone since (stale)."""
        index, now_ms = self.keys.sample_index, int(time.time() * 1000)
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(index, "-inf", now_ms - int(SAMPLE_STALE_S * 1000))
            pipe.zrange(index, 0, -1, withscores=True)
            _, listed = await pipe.execute()
        live = {_text(w): at for w, at in listed if _text(w) != self.me}
        gone = set(self._taken) - set(live)
        changed = [w for w, at in live.items() if self._taken.get(w) != at]
        fresh: dict[str, tuple[int, list[list[float]], int]] = {}
        if changed:
            blobs = await self.r.mget([self.keys.sample(w) for w in changed])
            for worker, blob in zip(changed, blobs, strict=True):
                if blob is None:  # expired between the two reads: gone
                    gone.add(worker)
                    continue
                entry: dict[str, Any] = orjson.loads(blob)
                seen = self._events.get(worker, entry["events"])
                self._events[worker], self._taken[worker] = entry["events"], live[worker]
                fresh[worker] = (entry["population"], entry["rows"],
                                 max(0, entry["events"] - seen))
        for worker in gone:
            self._taken.pop(worker, None)
            self._events.pop(worker, None)
        return fresh, gone


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
