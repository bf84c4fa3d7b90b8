"""Reading the Redis layout the worker uses, in tests: on one Redis the global keys, on a
Redis Cluster (``SEGMENTER_TEST_REDIS=cluster``) the sharded layout (``stream.shards``:
global keys under the hash tag ``{<prefix>}``, sizes and change streams per partition)."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from stream.keys import Keys
from stream.shards import change_id, streams, sum_hashes


def layout(r: aioredis.Redis, prefix: str) -> Keys:
    """The keys the worker uses on this Redis with this prefix."""
    return Keys(prefix, cluster=isinstance(r, RedisCluster))


async def counts(r: aioredis.Redis, prefix: str, name: str) -> dict[str, int]:
    """A counting hash (``sizes``, ``rfm``, ``audience-sizes``...), summed over the shards."""
    keys = layout(r, prefix)
    return await sum_hashes(r, keys, name, keys.global_key(name))


async def entries(r: aioredis.Redis, prefix: str, name: str) -> list[tuple[str, Any]]:
    """Every entry of a change stream (``changes``, ``audience-changes``) as ``(change id,
    fields)``: on a cluster every partition's stream, one after the other (one customer's
    changes are all in one stream, in order)."""
    keys = layout(r, prefix)
    out: list[tuple[str, Any]] = []
    for s in await streams(r, keys, name, keys.global_key(name)):
        got: Any = await r.xrange(s)
        out += [(change_id(s, eid), fields) for eid, fields in got]
    return out
