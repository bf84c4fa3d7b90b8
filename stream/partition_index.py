"""The warm start's index: one Redis set per events-topic partition of the customers whose
state was written from it (:meth:`stream.keys.Keys.partition`).

The write scripts of ``stream.redis_io`` add a customer to the set of the partition they
write from, in the same atomic call that writes the state (fenced and idempotent with it);
an erasure removes it. So a worker taking over partitions reads exactly their customers
(``SSCAN`` pages, then the states), not every state in Redis.

Deployments that stored states before the index existed rebuild it once with
``segmenter reindex`` (:func:`rebuild`), which then sets the marker
:attr:`~stream.keys.Keys.partition_indexed`. Until the marker is there, workers warm up by
``SCAN`` as before (:func:`indexed` tells which), so an upgrade never warms fewer customers.
A keyspace with no state at all (a new deployment) gets the marker from its first warm start.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio.cluster import RedisCluster

from models.features import CustomerState
from models.stitching import Links
from stream.errors import RetriableError, reason
from stream.redis_io import RETRIABLE, RedisStore

log = logging.getLogger(__name__)
INDEX_FORMAT = b"1"
"""Value of the marker: the index format (a future format rebuilds under a new value)."""

Cursor = int | dict[str, int]
"""A ``SCAN`` cursor: 0 to start and at the end; on a Redis Cluster, between steps, the
cursor of each primary not scanned to its end (by node name)."""


async def scan_step(r: Any, cursor: Cursor, match: str, count: int) -> tuple[Cursor, list[Any]]:
    """One ``SCAN`` step over the whole keyspace: on one Redis, ``SCAN``; on a Redis Cluster
    (whose keys are spread over the primaries, each with its own cursor) a first step
    on every primary, then one primary at a time until each is at its end. Returns the
    next cursor (0 at the end) and the keys found."""
    if not isinstance(r, RedisCluster):
        nxt, keys = await r.scan(cursor, match=match, count=count)
        return int(nxt), list(keys)
    got: Any
    if not cursor:  # redis-py's cluster SCAN: every primary, from their starts
        got = await r.scan(match=match, count=count)
    else:
        assert isinstance(cursor, dict)
        name, at = next(iter(cursor.items()))
        got = await r.scan(cursor=at, match=match, count=count,
                           target_nodes=r.get_node(node_name=name))
    cursors: dict[str, int] = {**(cursor or {}), **got[0]}
    keys = got[1]
    left = {name: int(c) for name, c in cursors.items() if int(c) != 0}
    return left or 0, list(keys)


async def partition_states(store: RedisStore, partition: int, cursor: int,
                           count: int = 1000, links: Links | None = None
                           ) -> tuple[int, list[CustomerState]]:
    """One ``SSCAN`` step over a partition's index: the next cursor (0 at the end) and the
    states of its customers whose last write came from that partition (an erased customer,
    or one moved by a repartition, is skipped); link records go to ``links``."""
    try:
        cursor, members = await store.r.sscan(store.keys.partition(partition), cursor,
                                              count=count)
        cids = [m.decode() if isinstance(m, bytes) else m for m in members]
        return int(cursor), await store.read_states(cids, {partition}, links)
    except RETRIABLE as exc:
        raise RetriableError(f"Redis unavailable while reading states: {reason(exc)}") from exc


async def scan_states(store: RedisStore, cursor: Cursor, partitions: set[int],
                      count: int = 1000, links: Links | None = None
                      ) -> tuple[Cursor, list[CustomerState], int]:
    """One ``SCAN`` step over every customer state (a keyspace without the index): the
    next cursor (0 at the end), the states of these partitions among the keys it returned
    (link records to ``links``), and how many keys it returned."""
    head = len(store.keys.state(""))
    try:
        cursor, keys = await scan_step(store.r, cursor, store.keys.state_pattern, count)
        cids = [(k.decode() if isinstance(k, bytes) else k)[head - 1:-1] for k in keys]
        return cursor, await store.read_states(cids, partitions, links), len(cids)
    except RETRIABLE as exc:
        raise RetriableError(f"Redis unavailable while scanning states: {reason(exc)}") from exc


async def indexed(store: RedisStore) -> bool:
    """Whether every stored state is in its partition's index (the marker is set)."""
    return await store.r.get(store.keys.partition_indexed) == INDEX_FORMAT


async def mark_if_empty(store: RedisStore) -> bool:
    """Set the marker when Redis holds no customer state (a new deployment: every state to
    come is written with its index entry). True when set."""
    async for _ in store.r.scan_iter(match=store.keys.state_pattern, count=1000):
        return False
    await store.r.set(store.keys.partition_indexed, INDEX_FORMAT)
    return True


async def rebuild(store: RedisStore, count: int = 1000) -> int:
    """Add every stored state to its partition's index (from the ``partition:`` head of the
    state string), set the marker, then :func:`prune` stale entries; returns how many
    states were indexed.

    Safe while workers run: ``SADD`` is idempotent and workers index what they write.
    One ``SCAN`` of the keyspace, one pipelined round trip of ``GETRANGE`` and one of
    ``SADD`` per page.
    """
    keys, r, head, total = store.keys, store.r, len(store.keys.state("")), 0
    cursor: Cursor = 0
    while True:
        cursor, found = await scan_step(r, cursor, keys.state_pattern, count)
        names = [k.decode() if isinstance(k, bytes) else k for k in found]
        if names:
            async with r.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.getrange(name, 0, 40)
                heads = await pipe.execute()
            by_partition: dict[bytes, list[str]] = defaultdict(list)
            for name, raw in zip(names, heads, strict=True):
                partition = raw.split(b":", 1)[0] if raw else b""
                if partition.isdigit():  # erased meanwhile: nothing to index
                    by_partition[partition].append(name[head - 1:-1])
            async with r.pipeline(transaction=False) as pipe:
                for partition, cids in by_partition.items():
                    pipe.sadd(keys.partition(partition.decode()), *cids)
                    total += len(cids)
                await pipe.execute()
        if cursor == 0:
            break
    await r.set(keys.partition_indexed, INDEX_FORMAT)
    log.info("indexed %d customer states by partition; %d stale entries removed", total,
             await prune(store, count))
    return total


async def prune(store: RedisStore, count: int = 1000) -> int:
    """Remove index entries whose customer has no state or was last written from another
    partition (moved by adding partitions); returns how many. Writes never add such an
    entry back: a write indexes the partition it writes from."""
    keys, r, removed = store.keys, store.r, 0
    pattern = re.sub(r"([*?\[\]\\])", r"\\\1", keys.partition("")[:-1]) + "*}"
    async for index in r.scan_iter(match=pattern, count=count):
        name = index.decode() if isinstance(index, bytes) else index
        partition = name[len(keys.partition("")) - 1:-1].encode()
        async for batch in _pages(r.sscan_iter(name, count=count), count):
            async with r.pipeline(transaction=False) as pipe:
                for cid in batch:
                    pipe.getrange(keys.state(_text(cid)), 0, 40)
                heads = await pipe.execute()
            stale = [cid for cid, h in zip(batch, heads, strict=True)
                     if h.split(b":", 1)[0] != partition]
            if stale:
                removed += await r.srem(name, *stale)
    return removed


async def _pages(items: AsyncIterator[Any], size: int) -> AsyncIterator[list[Any]]:
    page: list[Any] = []
    async for item in items:
        page.append(item)
        if len(page) == size:
            yield page
            page = []
    if page:
        yield page


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
