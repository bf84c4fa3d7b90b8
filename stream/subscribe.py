"""Reference subscriber: how a service consumes segment changes, or audience entries and
exits, durably.

It reads the Redis stream ``seg:changes`` (with ``audiences``: ``seg:audience-changes``,
whose entries have the same shape: one JSON message in the field ``change``) through a
consumer group, so several instances
share the work and a restarted one resumes where it stopped: it first re-reads its own
pending (delivered, unacknowledged) entries, then new ones; it acknowledges each entry only
after handling it. (Pub/Sub on the same channel name is instant but at most once.)
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from stream.keys import Keys
from stream.redis_io import connect
from stream.shards import change_id, streams


async def subscribe(url: str, prefix: str, group: str, consumer: str, from_start: bool,
                    handle: Callable[[str, dict[str, Any]], None],
                    stop: asyncio.Event | None = None, limit: int | None = None,
                    audiences: bool = False, cluster: bool = False,
                    options: dict[str, Any] | None = None) -> int:
    """Deliver each change to ``handle(stream_id, change)``; return how many were handled.
    With ``audiences``, the audience membership changes (``entered``/``exited``, contract
    §3) instead of the segment changes; a group's position is kept per stream.

    With ``limit``, exactly that many are handled and acknowledged (fewer only when
    ``stop`` is set first): each read asks for no more entries than are still wanted, and
    only handled entries are acknowledged, so the rest stay for the next run.

    With ``cluster`` (Redis Cluster, the sharded layout of ``stream.shards``) the changes
    are in one stream per partition (and the global one kept from before a migration): the
    group reads each, one customer's changes in their order (they are all in one stream).
    ``options``: credentials and TLS files (``stream.credentials.redis_options``).
    """
    r: aioredis.Redis = connect(url, max_connections=4, cluster=cluster, **(options or {}))
    keys = Keys(prefix, cluster=cluster)
    name, legacy = ("audience-changes", keys.audience_changes) if audiences else (
        "changes", keys.changes)
    reader = _Reader(r, group, consumer, from_start)
    handled = 0
    try:
        while (stop is None or not stop.is_set()) and (limit is None or handled < limit):
            await reader.discover(await streams(r, keys, name, legacy))
            count = 100 if limit is None else min(100, limit - handled)
            got = await reader.read(count)
            for key, entries in got:
                for entry_id, fields in entries:
                    if limit is not None and handled >= limit:
                        break  # not acknowledged: stays pending for the next run
                    # A pending entry trimmed from the stream comes back without fields:
                    # nothing to hand over; acknowledged, so it leaves the pending list.
                    if fields:
                        handle(change_id(key, entry_id), orjson.loads(fields[b"change"]))
                        handled += 1
                    await r.xack(key, group, entry_id)
    finally:
        await r.aclose()
    return handled


class _Reader:
    """A consumer group over several streams: on each, this consumer's pending entries
    first, then new ones."""

    def __init__(self, r: aioredis.Redis, group: str, consumer: str, from_start: bool) -> None:
        self.r, self.group, self.consumer, self.from_start = r, group, consumer, from_start
        self.start: dict[str, str] = {}  # stream -> "0" (own pending) or ">" (new)
        self._next = 0  # the stream to read first next time (round robin)
        self._listed = False  # the streams were listed once (later ones are new)

    async def discover(self, names: list[str]) -> None:
        """Join the group on streams not read yet (created at their start when
        ``from_start`` or found after the first listing: none of their entries was for
        this group yet)."""
        first, self._listed = not self._listed, True
        for key in names:
            if key not in self.start:
                with contextlib.suppress(ResponseError):  # BUSYGROUP: the group exists
                    await self.r.xgroup_create(
                        key, self.group, id="0" if self.from_start or not first else "$",
                        mkstream=True)
                self.start[key] = "0"

    async def read(self, count: int) -> list[tuple[str, list[Any]]]:
        """Entries of one stream, pending first: (stream, entries), or none after waiting
        up to two seconds."""
        for key, start in self.start.items():
            if start == "0":
                resp: Any = await self.r.xreadgroup(self.group, self.consumer, {key: "0"},
                                                    count=count)
                entries = resp[0][1] if resp else []
                if entries:
                    return [(key, entries)]
                self.start[key] = ">"
        if len(self.start) == 1:  # one stream (one Redis): a blocking read
            key = next(iter(self.start))
            # BLOCK stays below redis-py's 5 s socket timeout.
            resp = await self.r.xreadgroup(self.group, self.consumer, {key: ">"},
                                           count=count, block=2000)
            return [(key, resp[0][1])] if resp else []
        # several streams in several slots: no blocking read spans them; each in turn (one
        # at a time: a read delivers no more than is wanted), then a pause if all are idle
        names = list(self.start)
        for i in range(len(names)):
            key = names[(self._next + i) % len(names)]
            resp = await self.r.xreadgroup(self.group, self.consumer, {key: ">"}, count=count)
            if resp and resp[0][1]:
                self._next = (self._next + i + 1) % len(names)
                return [(key, resp[0][1])]
        await asyncio.sleep(0.2)
        return []


def print_change(entry_id: str, change: dict[str, Any]) -> None:
    """Print one change as a JSON line (with its stream id)."""
    sys.stdout.write(orjson.dumps({"id": entry_id, **change}).decode() + "\n")
    sys.stdout.flush()
