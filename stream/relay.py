"""Forwards segment changes from the Redis stream (written atomically with each change) to
the Kafka changes topic: the stream is the outbox, so a crash never loses a Kafka copy. The
same relay forwards segment lifecycle messages (``seg:lifecycle`` -> ``segment-lifecycle``).

One relay runs at a time across all workers (a Redis lock with a lease). It reads the stream
through the consumer group ``kafka-relay`` as the consumer ``relay``, produces, waits for the
broker's acks, then acknowledges; a new leader first re-sends what the old one left unacked.
So Kafka gets every change, in stream order, and a duplicate only after a crash between the
produce and the ack (the header ``segmenter.change_id``, the stream id, identifies it).

A relay paused past its lease (a GC pause, SIGSTOP) must neither take entries nor send
what it took before the pause once a successor may have sent newer changes. Entries are
taken (``XREADGROUP``) and acknowledged by scripts that first check the lease's fencing token
(:mod:`stream.lease`), so a deposed relay takes none; and between taking entries and
producing them it checks that the lease still holds by its own clock
(:meth:`stream.lease.Lease.valid`): after a pause it sends nothing, and what it took stays
pending for the successor, which sends it first. (A pause in the microseconds between that
check and the producer's own send can still repeat a batch after the successor's: the
duplicate the contract allows, identified by ``segmenter.change_id``.) Waiting for new
entries is a plain blocking ``XREAD``, which takes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from redis.exceptions import ResponseError

from stream.errors import reason
from stream.keys import Keys
from stream.lease import FENCE_LUA, Lease
from stream.redis_io import RETRIABLE
from stream.shards import change_id, streams

log = logging.getLogger(__name__)
GROUP, CONSUMER = "kafka-relay", "relay"
# Take entries only while no successor took the lease: {1, entries} ({id, fields} each), or
# {0, the newest id} when there is nothing to take (wait for newer), or {-1} when fenced.
_TAKE = FENCE_LUA + """
if fenced(KEYS[2], ARGV[1]) then return {-1} end
local got = redis.call('XREADGROUP', 'GROUP', ARGV[2], ARGV[3], 'COUNT', ARGV[4],
                       'STREAMS', KEYS[1], ARGV[5])
if got and #got[1][2] > 0 then return {1, got[1][2]} end
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
return {0, last[1] and last[1][1] or '0-0'}
"""
# Acknowledge only while no successor took the lease (their entries are theirs to ack).
_ACK = FENCE_LUA + """
if fenced(KEYS[2], ARGV[1]) then return -1 end
return redis.call('XACK', KEYS[1], ARGV[2], unpack(ARGV, 3))
"""


class ChangeRelay:
    """Redis stream -> Kafka topic, at least once, in order, one leader at a time."""

    def __init__(self, redis: aioredis.Redis, producer: AIOKafkaProducer, stream: str,
                 topic: str, lock_key: str, key_field: str = "customer_id",
                 field: bytes = b"change") -> None:
        self.r, self.producer, self.topic = redis, producer, topic
        self.stream, self.key_field, self.field = stream, key_field, field
        self.lease = Lease(redis, lock_key)
        self._ack = redis.register_script(_ACK)
        self._take = redis.register_script(_TAKE)
        self.fenced = 0
        """Batches read but not sent: the lease was lost meanwhile."""
        self.relayed = 0
        self.leader = False
        self._group_ready = False
        self._stop = asyncio.Event()

    def stop(self) -> None:
        """Ask :meth:`run` to return."""
        self._stop.set()

    async def run(self) -> None:
        """Relay until stopped; survives Redis and Kafka outages."""
        while not self._stop.is_set():
            try:
                self.leader = await self.lease.renew()
                if not self.leader:
                    await self._sleep(2.0)
                    continue
                if not self._group_ready:  # once, not per loop: BUSYGROUP errors cost a trip
                    with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists already
                        await self.r.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
                    self._group_ready = True
                # Our own unacknowledged entries first (a previous leader's crash), then new.
                sent, _ = await self._relay_once("0")
                if not sent:
                    sent, newest = await self._relay_once(">")
                    if not sent and newest is not None:  # wait for newer (takes nothing)
                        # BLOCK stays below redis-py's 5 s socket timeout.
                        await self.r.xread({self.stream: newest}, count=1, block=1000)
            except RETRIABLE as exc:
                self._group_ready = False  # a restarted Redis may have lost the group
                log.warning("change relay: Redis unavailable (%s)", reason(exc))
                await self._sleep(1.0)
            except Exception as exc:  # Kafka down, NOGROUP, anything else: retry, never die
                self._group_ready = False
                log.warning("change relay: %r; retrying", exc)
                await self._sleep(1.0)
        await self.lease.release()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _relay_once(self, start: str) -> tuple[int, bytes | None]:
        """Take entries from ``start`` (``0``: ours pending, ``>``: new) and send them:
        how many, and the newest id in the stream when there was none to take."""
        res: Any = await self._take(keys=[self.stream, self.lease.fence_key],
                                    args=[self.lease.token, GROUP, CONSUMER, 1000, start])
        if res[0] != 1:
            if res[0] == -1:
                self.leader = False
                return 0, None
            return 0, res[1]
        entries = [(entry_id, _pairs(flat)) for entry_id, flat in res[1]]
        if not self.lease.valid():
            # paused past the lease since it was renewed: a successor may have sent newer
            # changes already; it sends these first (pending for the relay consumer)
            self.fenced += 1
            log.warning("change relay: lease lost before sending %d entries; not sending",
                        len(entries))
            self.leader = False
            return 0, None
        futures = []
        for entry_id, fields in entries:
            if not fields:  # trimmed away before it was relayed: nothing left to send
                log.error("change %s was trimmed before the relay sent it", entry_id)
                continue
            msg = fields[self.field]
            key = str(orjson.loads(msg)[self.key_field]).encode()
            futures.append(await self.producer.send(
                self.topic, key=key, value=msg,
                headers=[("segmenter.change_id", change_id(self.stream, entry_id).encode())]))
        await asyncio.gather(*futures)
        await self._ack(keys=[self.stream, self.lease.fence_key],
                        args=[self.lease.token, GROUP, *[i for i, _ in entries]])
        self.relayed += len(entries)
        return len(entries), None


def _pairs(flat: list[bytes] | None) -> dict[bytes, bytes] | None:
    """Stream entry fields from a script's flat reply (None: trimmed before it was read)."""
    return dict(zip(flat[::2], flat[1::2], strict=True)) if flat else None


class ShardedRelay:
    """The sharded layout's relay of one kind of change (``changes`` or
    ``audience-changes``): a :class:`ChangeRelay` per stream (the global one kept from
    before a migration, then each partition's), each with a lease of its own in the slot
    of its stream, so the shards' relays spread over the workers. Streams of partitions
    that appear later are picked up within :attr:`DISCOVER_S` seconds.

    Kafka gets each stream's messages in that stream's order; one customer's changes are
    all in one stream (``stream.shards``), so in their order.
    """

    DISCOVER_S = 5.0

    def __init__(self, redis: aioredis.Redis, producer: AIOKafkaProducer, keys: Keys,
                 name: str, legacy: str, topic: str) -> None:
        self.r, self.producer, self.keys = redis, producer, keys
        self.name, self.legacy, self.topic = name, legacy, topic
        self.relays: dict[str, ChangeRelay] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()

    @property
    def leader(self) -> bool:
        """This worker relays at least one stream."""
        return any(r.leader for r in self.relays.values())

    @property
    def relayed(self) -> int:
        """Messages this worker forwarded."""
        return sum(r.relayed for r in self.relays.values())

    @property
    def fenced(self) -> int:
        """Batches read but not sent (the lease was lost meanwhile)."""
        return sum(r.fenced for r in self.relays.values())

    def stop(self) -> None:
        """Ask :meth:`run` to return."""
        self._stop.set()
        for relay in self.relays.values():
            relay.stop()

    async def run(self) -> None:
        """Start a relay per stream as streams appear; return when stopped."""
        while not self._stop.is_set():
            try:
                names = [n for n in await streams(self.r, self.keys, self.name, self.legacy)
                         if n not in self.relays]
                for name in names:
                    # from its first entry on (its group starts at 0): no empty stream made
                    if await self.r.exists(name):
                        relay = ChangeRelay(self.r, self.producer, name, self.topic,
                                            self.keys.relay_lease(name))
                        self.relays[name] = relay
                        self._tasks.append(asyncio.ensure_future(relay.run()))
            except RETRIABLE as exc:
                log.warning("change relay: Redis unavailable (%s)", reason(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.DISCOVER_S)
        for relay in self.relays.values():
            relay.stop()
        await asyncio.gather(*self._tasks)
