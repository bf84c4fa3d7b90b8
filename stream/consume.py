"""Reading the events topic: batches fetched and validated ahead of the one being applied.

Latency-aware: :class:`BatchReader` is *behind* when the last fetch filled its batch or the
broker's high watermarks show more than a live batch waiting; then it takes large batches
(``batch_max``, amortising per-batch work) and keeps up to ``ahead`` in flight. When caught
up it takes at most ``live_max`` records, reads nothing ahead (an event that arrives while
a batch is applied goes into the very next one, not behind a batch already read) and
validates a few records inline (no round trip to the helper). The mode changes nothing
but timing: the final state is the same whatever the batch sizes (``tests/unit/test_core``).

Behind, :class:`BatchReader` keeps up to ``ahead`` batches in flight. Each is fetched with
``getmany`` and validated, in the helper process of :mod:`stream.parsing` when it runs
(inline otherwise, in steps that let the batch being applied go on meanwhile). Fetches and
validations run one at a time and in the order asked, so batches stay in offset order, and a
batch goes to the helper only once it is done with the one before (a send to a busy helper
would block the event loop until it reads).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from models.records import Parsed, parse_records
from stream.metrics import Metrics
from stream.parsing import Validator, decode

Fetched = tuple[dict[TopicPartition, list[Any]], Parsed]
"""Records by partition, and each record parsed."""
_PARSE_STEP = 2000  # records validated inline between yields to the batch being applied
_FEW = 200  # caught up, batches of at most this many are validated inline


class BatchReader:
    """Fetches and validates the next batches of a started consumer.

    Parameters
    ----------
    consumer
        The events consumer (subscribed, started).
    validator
        The validation helper (inline while it is not running).
    metrics
        Stage timings go to ``segmenter_busy_seconds_total{stage=fetch|parse}``.
    batch_max
        Most records per batch.
    ahead
        Batches fetched and validated while one is applied, when behind.
    live_max
        Most records per batch when caught up (0: ``batch_max``, always behind).
    """

    def __init__(self, consumer: AIOKafkaConsumer, validator: Validator, metrics: Metrics,
                 batch_max: int, ahead: int = 2, live_max: int = 0) -> None:
        self.consumer, self.validator, self.metrics = consumer, validator, metrics
        self.batch_max, self.ahead = batch_max, ahead
        self.live_max = min(live_max or batch_max, batch_max)
        self.behind = True
        """Large batches read ahead (until a fetch shows the worker caught up)."""
        self._next: dict[TopicPartition, int] = {}  # offset after the last record fetched
        self.last_poll = 0.0
        """When the broker was last polled (wall clock), for the health check."""
        self.last_records = 0.0
        """When a poll last returned records (wall clock): the consumer is fetching."""
        self._queue: collections.deque[asyncio.Task[Fetched]] = collections.deque()
        self._reading = asyncio.Lock()

    async def next(self) -> Fetched:
        """The next batch (possibly empty); raises ``KafkaError`` when the fetch failed."""
        while len(self._queue) < (self.ahead if self.behind else 1):
            self._queue.append(asyncio.create_task(self._fetch()))
        return await self._queue.popleft()

    async def close(self) -> None:
        """Drop batches read but not applied: they are re-read after the last commit."""
        for task in self._queue:
            task.cancel()
        for task in self._queue:
            with contextlib.suppress(asyncio.CancelledError, KafkaError):
                await task
        self._queue.clear()

    def backlog(self) -> int:
        """Records on the broker past those fetched, on the partitions fetched from (high
        watermark of the last fetch response minus the next offset)."""
        owned = self.consumer.assignment()
        waiting = 0
        for tp, nxt in list(self._next.items()):
            if tp not in owned:
                del self._next[tp]
                continue
            high = self.consumer.highwater(tp)
            if high is not None:
                waiting += max(0, high - nxt)
        return waiting

    async def _fetch(self) -> Fetched:
        async with self._reading:
            fetching = time.perf_counter()
            size = self.batch_max if self.behind else self.live_max
            batch = await self.consumer.getmany(timeout_ms=200, max_records=size)
            self.metrics.busy.labels("fetch").inc(time.perf_counter() - fetching)
            self.last_poll = time.time()
            records = [m for msgs in batch.values() for m in msgs]
            if records:
                self.last_records = self.last_poll
            for tp, msgs in batch.items():
                if msgs:
                    self._next[tp] = msgs[-1].offset + 1
            few = not self.behind and len(records) <= _FEW
            self.behind = len(records) >= self.live_max or self.backlog() > self.live_max
            # a few records validate faster here than with a round trip to the helper
            blob = await self.validator.validate(records) if records and not few else None
        if blob is not None:  # validated in the helper while the loop applied a batch
            started = time.perf_counter()
            parsed = parse_records(records, decode(blob))
            self.metrics.busy.labels("parse").inc(time.perf_counter() - started)
            return batch, parsed
        parsed = []
        took = 0.0
        for i in range(0, len(records), _PARSE_STEP):
            started = time.perf_counter()
            chunk = records[i:i + _PARSE_STEP]
            parsed += parse_records(chunk, self.validator.inline(chunk))
            took += time.perf_counter() - started
            if i + _PARSE_STEP < len(records):
                await asyncio.sleep(0)  # the batch being applied goes on as Redis answers
        self.metrics.busy.labels("parse").inc(took)
        return batch, parsed
