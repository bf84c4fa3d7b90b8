"""Forwards segment changes from the Redis stream (written atomically with each change) to
the Kafka changes topic: the stream is the outbox, so a crash never loses a Kafka copy. The
same relay forwards segment lifecycle messages (``seg:lifecycle`` -> ``segment-lifecycle``).

One relay runs at a time across all workers (a Redis lock with a lease). It reads the stream
through the consumer group ``kafka-relay`` as the consumer ``relay``, produces, waits for the
broker's acks, then acknowledges; a new leader first re-sends what the old one left unacked.
So Kafka gets every change, in stream order, and a duplicate only after a crash between the
produce and the ack (the header ``segmenter.change_id``, the stream id, identifies it).
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

from stream.lease import Lease
from stream.redis_io import RETRIABLE

log = logging.getLogger(__name__)
GROUP, CONSUMER = "kafka-relay", "relay"


class ChangeRelay:
    """Redis stream -> Kafka topic, at least once, in order, one leader at a time."""

    def __init__(self, redis: aioredis.Redis, producer: AIOKafkaProducer, stream: str,
                 topic: str, lock_key: str, key_field: str = "customer_id",
                 field: bytes = b"change") -> None:
        self.r, self.producer, self.topic = redis, producer, topic
        self.stream, self.key_field, self.field = stream, key_field, field
        self.lease = Lease(redis, lock_key)
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
                sent = await self._relay_once("0", block=None)
                if not sent:
                    await self._relay_once(">", block=1000)
            except RETRIABLE as exc:
                self._group_ready = False  # a restarted Redis may have lost the group
                log.warning("change relay: Redis unavailable (%s)", exc)
                await self._sleep(1.0)
            except Exception as exc:  # Kafka down, NOGROUP, anything else: retry, never die
                self._group_ready = False
                log.warning("change relay: %r; retrying", exc)
                await self._sleep(1.0)
        await self.lease.release()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _relay_once(self, start: str, block: int | None) -> int:
        # BLOCK stays below redis-py's 5 s socket timeout.
        resp: Any = await self.r.xreadgroup(GROUP, CONSUMER, {self.stream: start},
                                            count=1000, block=block)
        entries = resp[0][1] if resp else []
        if not entries:
            return 0
        futures = []
        for entry_id, fields in entries:
            if not fields:  # trimmed away before it was relayed: nothing left to send
                log.error("change %s was trimmed before the relay sent it", entry_id)
                continue
            msg = fields[self.field]
            key = str(orjson.loads(msg)[self.key_field]).encode()
            futures.append(await self.producer.send(
                self.topic, key=key, value=msg,
                headers=[("segmenter.change_id", entry_id)]))
        await asyncio.gather(*futures)
        await self.r.xack(self.stream, GROUP, *[i for i, _ in entries])
        self.relayed += len(entries)
        return len(entries)
