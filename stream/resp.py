"""Many script calls in one round trip on one Redis, packed by hiredis (C).

redis-py's asyncio pipeline packs every argument in Python (``Encoder.encode`` and
``pack_command`` per argument): with ~25 arguments per customer write that was the largest
single cost of the worker's flush on its main thread (cProfile over 200k events: 1.6 s of
9.5 s in ``pack_command``). ``hiredis.pack_command`` builds the same bytes in C. The
replies are read as the pipeline reads them: one per call, in order, an error reply as its
exception in its place. On a Redis Cluster the caller keeps the cluster pipeline (it routes
each call by its first key's slot).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["evalsha_many", "pack_evalsha", "run_many"]


def pack_evalsha(sha: str, nkeys: int, calls: Sequence[Sequence[Any]]) -> bytes:
    """``EVALSHA sha nkeys *call`` for every call, as RESP bytes (what redis-py sends:
    ``str`` as UTF-8, ``int`` and ``float`` as their decimal text, ``repr`` for floats)."""
    pack = hiredis.pack_command
    return b"".join([pack(("EVALSHA", sha, nkeys, *call)) for call in calls])


async def evalsha_many(client: aioredis.Redis, sha: str, nkeys: int,
                       calls: Sequence[Sequence[Any]]) -> list[Any]:
    """Run the script ``sha`` once per call on one connection of ``client``'s pool, in one
    round trip; replies in call order (an error reply, e.g. ``NOSCRIPT``, as its exception).
    A connection error drops the connection (the next use reconnects) and is raised: the
    caller retries the whole batch, as every write script is fenced and idempotent."""
    return await _exchange(client, pack_evalsha(sha, nkeys, calls), len(calls))


async def run_many(client: Any, commands: Sequence[Sequence[Any]]) -> list[Any]:
    """Commands whose replies redis-py leaves as they come (``GET``, ``HMGET``, ``EVALSHA``;
    not ``HGETALL``, which it turns into a dict) in one round trip, replies in order; the
    first error reply is raised. A cluster client's go through its pipeline (it routes each
    command by its first key's slot)."""
    if isinstance(client, RedisCluster):
        async with client.pipeline(transaction=False) as pipe:
            for cmd in commands:
                pipe.execute_command(*cmd)
            return list(await pipe.execute())
    pack = hiredis.pack_command
    out = await _exchange(client, b"".join([pack(tuple(c)) for c in commands]), len(commands))
    for res in out:
        if isinstance(res, ResponseError):
            raise res
    return out


async def _exchange(client: aioredis.Redis, packed: bytes, n: int) -> list[Any]:
    pool = client.connection_pool
    conn = await pool.get_connection()
    try:
        await conn.send_packed_command(packed)
        return await _replies(conn, n)
    except BaseException:
        await conn.disconnect()  # replies may be left unread: never reuse it as it is
        raise
    finally:
        await pool.release(conn)


async def _replies(conn: Any, n: int) -> list[Any]:
    """``n`` replies (an error reply as its exception object). One timer for them all,
    pushed back as replies come, so a read fails after the connection's socket timeout
    without a reply, as with redis-py's ``read_response``, which arms a timer per reply (a
    third of the CPU of reading a batch's replies)."""
    limit = conn.socket_timeout
    loop = asyncio.get_running_loop()
    read = conn._read_response_from_parser  # redis-py's read_response without its timer
    out: list[Any] = []
    try:
        async with asyncio.timeout(limit) as timer:
            moved = loop.time()
            for _ in range(n):
                out.append(await read())
                if limit and (now := loop.time()) - moved > limit / 4:
                    timer.reschedule(now + limit)
                    moved = now
    except TimeoutError as exc:  # (before OSError: a subclass of it)
        raise RedisTimeoutError(f"Timeout reading from Redis: {n - len(out)} replies "
                                "missing") from exc
    except OSError as exc:
        raise RedisConnectionError(f"Error while reading from Redis: {exc.args}") from exc
    if conn.health_check_interval:  # as read_response: a reply shows the connection works
        conn.next_health_check = loop.time() + conn.health_check_interval
    return out
