"""The Faust application: worker lifecycle, HTTP views, timers; the batched pipeline runs
inside it as a task (see the README's architecture section for why)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from typing import Any

import faust
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stream.kafka_io import LagReader, ensure_topics
from stream.metrics import Metrics
from stream.pipeline import EventPipeline
from stream.redis_io import RedisStore, connect
from stream.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> faust.App:
    """Build the worker's Faust app for these settings."""
    app = faust.App(
        f"{settings.group}-app",  # Faust's own group; the events group is settings.group
        broker=f"kafka://{settings.kafka}",
        web_port=settings.web_port,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(0.3, settings.session_timeout_s / 4),
        topic_partitions=settings.partitions,
        store="memory://",
        datadir=f"/tmp/segmenter-faust-{settings.group}-{settings.web_port}",
    )
    metrics = Metrics()
    # Clients bind to the running loop, so they are made in the task; views wait for them.
    redis = connect(settings.redis_url)
    store = RedisStore(redis, settings.redis_prefix, settings.stream_maxlen)
    pipeline = EventPipeline(settings, store, metrics)
    lag_reader = LagReader(settings.kafka, settings.group, settings.events_topic)
    state: dict[str, Any] = {"started": False}

    @app.task
    async def run_pipeline() -> None:
        await ensure_topics(settings)
        await pipeline.start()
        await lag_reader.start()
        state["started"] = True
        log.info("segmenter worker consuming %r as group %r", settings.events_topic,
                 settings.group)
        try:
            await pipeline.run()
        except Exception as exc:
            # In-memory states may be ahead of Redis now; restarting from the last commit
            # (with states re-read from Redis) is the only safe way on.
            log.critical("pipeline failed, stopping the worker: %r", exc)
            await app.crash(exc)

    @app.timer(interval=2.0)
    async def observe() -> None:
        if not state["started"]:
            return
        try:
            for p in await lag_reader.read():
                metrics.lag.labels(p.topic, str(p.partition)).set(p.lag)
            await pipeline.refresh_sizes()
        except Exception as exc:  # monitoring must never stop the worker
            log.warning("lag/size refresh failed: %s", exc)

    # mode types receivers with a positional-only first parameter, which def cannot spell
    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def shutdown(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        await pipeline.stop()
        if state["started"]:
            await lag_reader.close()
        await redis.aclose()

    @app.page("/customers/{customer_id}/segment")
    class CustomerSegment(View):
        async def get(self, request: Request, customer_id: str) -> Response:
            doc = await store.customer(customer_id)
            if doc is None:
                return self.json({"error": "unknown customer", "customer_id": customer_id},
                                 status=404)
            return self.json({"customer_id": customer_id, **_typed(doc)})

    @app.page("/segments")
    class Segments(View):
        async def get(self, request: Request) -> Response:
            return self.json(await store.profiles())

    @app.page("/segments/{segment_id}")
    class OneSegment(View):
        async def get(self, request: Request, segment_id: str) -> Response:
            profiles = await store.profiles()
            if segment_id not in profiles:
                return self.json({"error": "unknown segment"}, status=404)
            return self.json(profiles[segment_id])

    @app.page("/health")
    class Health(View):
        async def get(self, request: Request) -> Response:
            reasons = []
            if not state["started"]:
                reasons.append("starting")
            elif time.time() - pipeline.last_poll > 15:
                reasons.append("not consuming: no poll for 15 s")
            if pipeline.problem:
                reasons.append(pipeline.problem)
            try:
                await asyncio.wait_for(redis.ping(), 2)
            except Exception as exc:
                reasons.append(f"Redis unreachable: {exc}")
            body = {"status": "ok" if not reasons else "unavailable", "reasons": reasons,
                    "processed": pipeline.processed,
                    "model_version": pipeline.segmenter.model.version}
            return self.json(body, status=200 if not reasons else 503)

    @app.page("/metrics")
    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(generate_latest(metrics.registry),
                              content_type=CONTENT_TYPE_LATEST.split(";")[0])

    app.segmenter_pipeline = pipeline  # type: ignore[attr-defined]
    return app


def _typed(doc: dict[str, str]) -> dict[str, Any]:
    """Hash fields with their JSON types (Redis stores strings)."""
    out: dict[str, Any] = dict(doc)
    for name, kind in (("model_version", int), ("updated_at", int), ("confidence", float)):
        if name in out:
            with contextlib.suppress(ValueError):
                out[name] = kind(out[name])
    return out


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Run one worker until SIGINT/SIGTERM."""
    # The hot path allocates many short-lived objects and keeps many long-lived ones (the
    # state cache); default GC thresholds rescan the long-lived ones far too often (~15% of
    # CPU measured). Cycles are rare here, so collect less often, and never the start-up heap.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)
    app = create_app(settings)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
