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


async def subscribe(url: str, prefix: str, group: str, consumer: str, from_start: bool,
                    handle: Callable[[str, dict[str, Any]], None],
                    stop: asyncio.Event | None = None, limit: int | None = None,
                    audiences: bool = False) -> int:
    """Deliver each change to ``handle(stream_id, change)``; return how many were handled.
    With ``audiences``, the audience membership changes (``entered``/``exited``, contract
    §3) instead of the segment changes; a group's position is kept per stream.

    With ``limit``, exactly that many are handled and acknowledged (fewer only when
    ``stop`` is set first): each read asks for no more entries than are still wanted, and
    only handled entries are acknowledged, so the rest stay for the next run.
    """
    r: aioredis.Redis = connect(url, max_connections=2)
    key = Keys(prefix).audience_changes if audiences else Keys(prefix).changes
    handled = 0
    try:
        with contextlib.suppress(ResponseError):  # BUSYGROUP: the group exists
            await r.xgroup_create(key, group, id="0" if from_start else "$", mkstream=True)
        start = "0"  # our pending entries first
        while (stop is None or not stop.is_set()) and (limit is None or handled < limit):
            count = 100 if limit is None else min(100, limit - handled)
            # BLOCK stays below redis-py's 5 s socket timeout.
            resp: Any = await r.xreadgroup(group, consumer, {key: start}, count=count,
                                           block=None if start == "0" else 2000)
            entries = resp[0][1] if resp else []
            if start == "0" and not entries:
                start = ">"
                continue
            for entry_id, fields in entries:
                # A pending entry trimmed from the stream comes back without fields: nothing
                # to hand over; acknowledged, so it leaves the pending list.
                if fields:
                    handle(entry_id.decode(), orjson.loads(fields[b"change"]))
                    handled += 1
                await r.xack(key, group, entry_id)
    finally:
        await r.aclose()
    return handled


def print_change(entry_id: str, change: dict[str, Any]) -> None:
    """Print one change as a JSON line (with its stream id)."""
    sys.stdout.write(orjson.dumps({"id": entry_id, **change}).decode() + "\n")
    sys.stdout.flush()
