"""Identity stitching's I/O (README "Identity stitching"): what the core's
:class:`~models.stitcher.Stitcher` decided in a batch, written to Redis and produced to the
events topic before the batch is committed (:meth:`stream.writes.BatchWriter._write`).

In a batch's write, in this order: link records (in place of anonymous ids' states,
fenced by the link message's offset) and the deletions of those unlinked, then the
customers' writes (by the writer), then the mirrors and ``merge`` change messages of the
anonymous ids merged, then every message to produce (links, merges, forwarded events,
erasures of linked ids, unlinks) in the order decided, acknowledged by the broker. A crash
anywhere in between redelivers the batch, and every step is idempotent
(``tests/unit/test_stitching.py``, ``tests/integration/test_stitching.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from models.identity import UNLINK, Unlink, encode_unlink
from models.records import CONTROL_HEADER
from models.stitching import RECORD_FRAME
from stream.errors import RetriableError, reason
from stream.redis_io import RETRIABLE, RedisStore
from stream.stitch_lua import UNLINK_BODY
from stream.write_lua import LINK, MERGE

log = logging.getLogger(__name__)

Outgoing = Sequence[tuple[bytes, bytes | None, bytes | None]]
"""Messages for the events topic: key, value, control header value (None: an event)."""


class Stitching:
    """Link records, mirrors and identity messages of one worker.

    Parameters
    ----------
    store
        Redis.
    producer, topic
        Where links, merges and forwarded events go: the events topic.
    bound
        ``SEGMENTER_MAX_ANONYMOUS_IDS``: most anonymous ids linked to one customer.
    """

    def __init__(self, store: RedisStore, producer: AIOKafkaProducer, topic: str,
                 bound: int) -> None:
        self.store, self.producer, self.topic, self.bound = store, producer, topic, bound
        self._link = store.r.register_script(LINK)
        self._merge = store.r.register_script(MERGE)
        self._unlink = store.r.register_script(UNLINK_BODY)
        self._warned = False

    async def write_links(self, linked: list[tuple[str, int, int, bytes]]) -> int:
        """Write link records in place of these anonymous ids' states; returns how many
        were fenced (a newer write from the same partition)."""
        if not linked:
            return 0
        store, k = self.store, self.store.keys
        try:
            results = await store.pipelined(self._link, 2, [
                (k.state(anon), *store.agg_keys(anon, k.partition(p)), p, o,
                 b"%d:%d:%s" % (p, o, blob), anon, store.shard_arg(p))
                for anon, p, o, blob in linked])
            await store.apply_outboxes([anon for anon, *_ in linked], results)
        except RETRIABLE as exc:
            raise RetriableError(f"Redis unavailable while linking: {reason(exc)}") from exc
        return sum(1 for r in results if r[0] == -1)

    async def unlink(self, unlinked: list[tuple[str, str]]) -> None:
        """Delete these anonymous ids' link records, each if it still links to the customer
        given (before the batch's writes: the ids' later events are profiles of their own)."""
        if not unlinked:
            return
        k = self.store.keys
        try:
            await self.store.pipelined(self._unlink, 1, [
                (k.state(anon), RECORD_FRAME + orjson.dumps([cid])[:-1] + b",")
                for anon, cid in unlinked])
        except RETRIABLE as exc:
            raise RetriableError(f"Redis unavailable while unlinking: {reason(exc)}") from exc

    async def mirror(self, merged: list[tuple[str, str, str, int]], now_ms: int,
                     produce: list[tuple[bytes, bytes | None, bytes | None]]) -> list[bytes]:
        """Mirrors and ``merge`` change messages of anonymous ids merged into customers
        (after the customers' writes); returns the change messages. An id dropped past
        its customer's bound gets an unlink control message (appended to ``produce``)."""
        if not merged:
            return []
        store, k = self.store, self.store.keys
        if store.shards is not None:  # the keys span slots: not linked on a cluster yet
            if not self._warned:
                log.warning("identity stitching on Redis Cluster: anonymous ids are merged "
                            "into their customers, but lookups by an anonymous id are not "
                            "linked (no mirror of the customer's hash) and a customer's "
                            "erasure does not reach its anonymous ids")
                self._warned = True
            return []
        try:
            results = await store.pipelined(self._merge, 10, [
                (k.customer(anon), k.customer(cid), k.ids(cid), k.sizes, k.changes, k.rfm,
                 k.audience_sizes, k.audience_changes, k.audiences, k.rfm_grid, anon, cid,
                 event_id, now_ms, store.maxlen, ts, self.bound, b"")
                for anon, cid, event_id, ts in merged])
        except RETRIABLE as exc:
            raise RetriableError(f"Redis unavailable while merging: {reason(exc)}") from exc
        for (_, cid, _, _), res in zip(merged, results, strict=True):
            produce.extend((_text(a).encode(), encode_unlink(Unlink(cid, _text(a))), UNLINK)
                           for a in res[2:])
        return [r[1] for r in results if r[0] == 1]

    async def linked(self, cids: list[str]) -> list[str]:
        """The anonymous ids linked to these customers (before they are erased)."""
        if not cids or self.store.shards is not None:
            return []
        async with self.store.r.pipeline(transaction=False) as pipe:
            for cid in cids:
                pipe.hkeys(self.store.keys.ids(cid))
            got = await pipe.execute()
        return [a.decode() if isinstance(a, bytes) else a for ids in got for a in ids]

    async def produce(self, messages: Outgoing) -> None:
        """Produce ``messages`` to the events topic in order and wait for the broker's
        acknowledgements (before the batch that decided them is committed)."""
        await produce(self.producer, self.topic, messages)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def produce(producer: AIOKafkaProducer, topic: str, messages: Outgoing) -> None:
    """Send ``messages`` (key, value, control header) to ``topic`` in order; wait for all."""
    futures: list[Any] = []
    for key, value, control in messages:
        headers = [(CONTROL_HEADER, control)] if control is not None else None
        futures.append(await producer.send(topic, key=key, value=value, headers=headers))
    if futures:
        await asyncio.gather(*futures)
