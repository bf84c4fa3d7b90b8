"""A worker's rounds beside the hot path: model upkeep, the lag read from the broker, the
gauges and the dashboard's samples, each repeated a pause after the previous one ended.

Faust's timers aim at a fixed rate and warn "Timer ... is overlapping" whenever a round
outlasts its interval. On a worker busy with a backfill both of these did, always: the
model's round waits for the pipeline's lock, held while a batch of up to
``SEGMENTER_BATCH_MAX`` events is applied and written (1-5 s on 2 cores), and the lag read
makes several broker round trips on an event loop busy applying batches (3-7 s). Nothing
ran twice at once (a timer awaits its round), but the demo's log had 41 such warnings in two
minutes, the lag read's 5 s timeout then reported Kafka unreachable while the worker consumed
fine, and the samples behind sizes and the dashboard waited for the broker. Here each round
starts ``interval`` seconds after the previous one ended, the samples never wait for the
broker (they use the last lag read), and a lag read that fails while the consumer is getting
records says the worker is degraded, not that Kafka is unreachable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from stream.errors import reason
from stream.health import Health
from stream.lag import LagReader, PartitionLag, most_behind
from stream.metrics import Metrics

log = logging.getLogger(__name__)


async def every(interval: float, round_: Callable[[], Awaitable[None]]) -> None:
    """``await round_()`` forever, each ``interval`` seconds after the previous one ended
    (never two at once, never a burst to catch up); a round that raises is logged and the
    next one runs all the same."""
    while True:
        await asyncio.sleep(interval)
        try:
            await round_()
        except Exception as exc:  # never the end of the rounds (nor of the others gathered)
            log.warning("%s failed: %r", getattr(round_, "__name__", "a round"), exc)


class LagWatch:
    """Reads the group's lag from the broker for the gauges, the dashboard and ``/health``.

    Parameters
    ----------
    reader
        The worker's lag reader (started).
    health, metrics
        Where problems and figures go.
    fetched
        When the worker's consumer last got records (wall clock, 0 never): a read that fails
        while it does is a slow read on a busy worker, not an unreachable broker.
    timeout
        Longest wait for one read, in seconds.
    """

    def __init__(self, reader: LagReader, health: Health, metrics: Metrics,
                 fetched: Callable[[], float], timeout: float = 5.0) -> None:
        self.reader, self.health, self.metrics = reader, health, metrics
        self.fetched, self.timeout = fetched, timeout
        self.rows: list[PartitionLag] | None = None
        """The last lag read (None before the first)."""

    async def read(self) -> None:
        """One read; never raises."""
        started = time.time()
        try:
            # aiokafka's fetch loop just returns nothing while the broker is away; this read
            # from the broker is what notices.
            rows = await asyncio.wait_for(self.reader.read(), self.timeout)
        except Exception as exc:
            self.failed(exc, consuming=self.fetched() >= started)
            return
        self.health.clear("lag")
        self.health.degrade("lag", [])
        if self.reader.offline:  # its events wait: not healthy
            self.health.report("replication", "; ".join(self.reader.offline))
        else:
            self.health.clear("replication")
        self.health.degrade("kafka", self.reader.degraded)
        now_ms = int(time.time() * 1000)
        for p in rows:
            self.metrics.lag.labels(p.topic, str(p.partition)).set(p.lag)
            behind = p.seconds_behind(now_ms)
            if behind is not None:  # unknown: the gauge keeps its last value
                self.metrics.lag_seconds.labels(p.topic, str(p.partition)).set(behind)
        self.rows = rows

    def failed(self, exc: BaseException, consuming: bool) -> None:
        """A read failed with ``exc``; ``consuming``: the consumer got records meanwhile, so
        the broker answers and only this read was slow (a worker busy on few cores)."""
        if consuming:
            self.health.clear("lag")
            self.health.degrade("lag", [f"consumer lag not read ({reason(exc)}): the worker "
                                        "is busy; it consumes"])
            log.info("lag read failed while consuming (%s); the last figures stand",
                     reason(exc))
        else:
            self.health.report("lag", f"Kafka unreachable: {reason(exc)}")
            log.warning("lag read failed: %s", reason(exc))

    def totals(self, now_ms: int) -> tuple[int, float | None] | None:
        """Lag and seconds behind of the last read, for a dashboard sample (None before a
        first read)."""
        if self.rows is None:
            return None
        return sum(p.lag for p in self.rows), most_behind(self.rows, now_ms)
