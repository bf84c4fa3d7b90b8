"""Data behind the dashboard page (``GET /`` renders it, ``GET /api/dashboard`` serves it):
a short history of sizes, throughput and lag sampled by the worker's timer, plus segment
flows read from the change stream."""

from __future__ import annotations

import time
from collections import Counter, deque
from typing import TYPE_CHECKING, Any

import orjson

from stream.shards import newest, streams

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from stream.redis_io import Keys
    from stream.status import WorkerStatus

HISTORY = 300  # samples: 10 minutes at one per 2 s
FLOW_WINDOW_S = 300


class Dashboard:
    """Samples a worker's state for people to watch."""

    def __init__(self) -> None:
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self.freshness: deque[float] = deque(maxlen=5000)  # recent Kafka arrival->Redis seconds
        self._last: tuple[float, float, float] | None = None  # time, processed, dead

    def sample(self, status: WorkerStatus, sizes: dict[str, int], lag: int,
               behind: float | None) -> None:
        """Called by the worker's timer."""
        now = time.time()
        processed = float(status.processed)
        dead = float(status.dead_lettered)
        rate = dlq = 0.0
        if self._last is not None and now > self._last[0]:
            rate = (processed - self._last[1]) / (now - self._last[0])
            dlq = (dead - self._last[2]) / (now - self._last[0])
        self._last = (now, processed, dead)
        self.history.append({"t": int(now * 1000), "sizes": sizes, "events_per_s": rate,
                             "dlq_per_s": dlq, "lag": lag, "seconds_behind": behind})

    def percentiles(self) -> dict[str, float | None]:
        """Freshness (arrival in Kafka to Redis write), over the most recent events."""
        data = sorted(self.freshness)
        if not data:
            return {"p50": None, "p95": None, "p99": None}
        return {f"p{q}": data[min(len(data) - 1, int(len(data) * q / 100))]
                for q in (50, 95, 99)}

    async def snapshot(self, status: WorkerStatus, redis: Redis, keys: Keys,
                       profiles: dict[str, Any],
                       audiences: dict[str, dict[str, Any]] | None = None,
                       rfm: dict[str, Any] | None = None) -> dict[str, Any]:
        """Everything the page shows, in one JSON document; ``audiences`` as
        ``GET /audiences`` describes them, each with its entries and exits per minute over
        the flow window; ``rfm`` the RFM grid (:func:`stream.rfm_io.read_grid`)."""
        last = self.history[-1] if self.history else {}
        since = int((time.time() - FLOW_WINDOW_S) * 1000)
        flows: Counter[tuple[str, str]] = Counter()
        entries: Any = await newest(redis, await streams(redis, keys, "changes", keys.changes),
                                    5000)
        for _, fields in entries:
            change = orjson.loads(fields[b"change"])
            if change["changed_at"] < since:
                break
            flows[change["from"] or "new", change["to"] or "erased"] += 1
        recent: Any = await redis.xrevrange(keys.lifecycle, count=10)
        moves: Counter[tuple[str, str]] = Counter()
        moved: Any = await newest(redis, await streams(
            redis, keys, "audience-changes", keys.audience_changes), 5000)
        for _, fields in moved:
            change = orjson.loads(fields[b"change"])
            if change["changed_at"] < since:
                break
            moves[change["audience"], change["change"]] += 1
        per_min = 60 / FLOW_WINDOW_S
        listed = [{**a, "entered_per_min": round(moves[aid, "entered"] * per_min, 2),
                   "exited_per_min": round(moves[aid, "exited"] * per_min, 2)}
                  for aid, a in (audiences or {}).items()]
        return {
            "now": int(time.time() * 1000),
            "model": {"algorithm": status.algorithm, "trains": status.trains,
                      "segments": status.segments, "criterion": status.criterion,
                      "drift_detections": status.drift_detections,
                      "waiting": status.waiting},
            "lifecycle": [orjson.loads(f[b"lifecycle"]) for _, f in recent],
            "model_version": status.model_version,
            "processed": status.processed,
            "dead_lettered": status.dead_lettered,
            "events_per_s": last.get("events_per_s", 0.0),
            "dlq_per_s": last.get("dlq_per_s", 0.0),
            "lag": last.get("lag"),
            "seconds_behind": last.get("seconds_behind"),
            "freshness_s": self.percentiles(),
            "health": status.problems,
            "segments": profiles,
            "audiences": listed,
            "rfm": rfm,
            "history": list(self.history),
            "flows": [{"from": f, "to": t, "count": n} for (f, t), n in flows.most_common()],
            "flow_window_s": FLOW_WINDOW_S,
        }
