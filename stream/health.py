"""What is wrong with a worker right now, and the retry loop that waits problems out.

Each source of trouble (the broker's fetches and commits, Redis, the lag reader) reports
into one :class:`Health` under its own name and clears it when it works again; ``GET
/health`` lists what is set. :func:`retry` runs a Redis call until it succeeds, with capped
exponential back-off: a batch is never skipped.

Examples
--------
>>> h = Health()
>>> h.report("redis", "Redis unavailable: connection refused")
>>> h.reasons()
['Redis unavailable: connection refused']
>>> h.clear("redis"); h.reasons()
[]
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from prometheus_client import Counter

from stream.errors import RetriableError, reason

log = logging.getLogger(__name__)
T = TypeVar("T")


class Health:
    """Current problems by source (``kafka``, ``redis``, ``lag``, ...)."""

    def __init__(self) -> None:
        self._problems: dict[str, str] = {}
        self._degraded: dict[str, list[str]] = {}

    def report(self, source: str, problem: str) -> None:
        """``source`` has ``problem`` now."""
        self._problems[source] = problem

    def clear(self, source: str) -> None:
        """``source`` works again."""
        self._problems.pop(source, None)

    def reasons(self) -> list[str]:
        """Every current problem, in the order reported."""
        return list(self._problems.values())

    def degrade(self, source: str, details: list[str]) -> None:
        """What of ``source`` works with less margin now (a broker down, partitions
        under-replicated); an empty list: nothing. Not a problem: the worker still works."""
        self._degraded[source] = details

    def degraded(self) -> list[str]:
        """Everything working with less margin now."""
        return [d for details in self._degraded.values() for d in details]


async def retry(call: Callable[[], Awaitable[T]], health: Health, errors: Counter) -> T:
    """``await call()`` until it does not raise :class:`RetriableError` (Redis outages),
    reporting the outage to ``health`` and counting it in ``errors`` meanwhile."""
    delay = 0.2
    while True:
        try:
            result = await call()
            health.clear("redis")
            return result
        except RetriableError as exc:
            health.report("redis", reason(exc))
            errors.inc()
            log.warning("%s; retrying in %.1f s", reason(exc), delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
