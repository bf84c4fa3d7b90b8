"""Reading the events topic: batches fetched and validated ahead of the one being applied.

:class:`BatchReader` keeps up to ``ahead`` batches in flight. Each is fetched with
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
        Batches fetched and validated while one is applied.
    """

    def __init__(self, consumer: AIOKafkaConsumer, validator: Validator, metrics: Metrics,
                 batch_max: int, ahead: int = 2) -> None:
        self.consumer, self.validator, self.metrics = consumer, validator, metrics
        self.batch_max, self.ahead = batch_max, ahead
        self.last_poll = 0.0
        """When the broker was last polled (wall clock), for the health check."""
        self._queue: collections.deque[asyncio.Task[Fetched]] = collections.deque()
        self._reading = asyncio.Lock()

    async def next(self) -> Fetched:
        """The next batch (possibly empty); raises ``KafkaError`` when the fetch failed."""
        while len(self._queue) < self.ahead:
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

    async def _fetch(self) -> Fetched:
        async with self._reading:
            fetching = time.perf_counter()
            batch = await self.consumer.getmany(timeout_ms=200, max_records=self.batch_max)
            self.metrics.busy.labels("fetch").inc(time.perf_counter() - fetching)
            self.last_poll = time.time()
            records = [m for msgs in batch.values() for m in msgs]
            blob = await self.validator.validate(records) if records else None
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
