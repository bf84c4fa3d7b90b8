"""The Faust application: worker lifecycle, HTTP views, timers; the batched pipeline and the
change relay run inside it as tasks (see the README's architecture section for why)."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import faust
from aiohttp_cors import ResourceOptions

from stream import guard, native_memory, web
from stream.credentials import faust_credentials
from stream.errors import reason
from stream.monitor import LagWatch, every
from stream.runtime import Runtime
from stream.settings import Settings

if TYPE_CHECKING:
    from stream.pipeline import EventPipeline

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> faust.App:
    """Build the worker's Faust app for these settings."""
    cors = {o.strip(): ResourceOptions(allow_headers="*", allow_methods="*",
                                       expose_headers="*", max_age=600)
            for o in settings.cors_origins.split(",") if o.strip()}
    app = faust.App(
        f"{settings.group}-app",  # Faust's own group; the events group is settings.group
        broker=f"kafka://{settings.kafka}",
        broker_credentials=faust_credentials(settings),
        web_port=settings.web_port,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        web_cors_options=cors or None,
        # every body is bounded (413 past it), every refusal is JSON naming the problem
        web_application_options={"client_max_size": settings.max_body_bytes,
                                 "middlewares": [guard.middleware(settings.max_body_bytes)]},
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(0.3, settings.session_timeout_s / 4),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication,  # its own topics, as durable as ours
        store="memory://",
        datadir=f"/tmp/segmenter-faust-{settings.group}-{settings.web_port}",
    )
    rt = Runtime(settings)

    @app.task
    async def run_pipeline() -> None:
        await rt.start()
        relays = [asyncio.ensure_future(r.run()) for r in rt.relays]
        log.info("segmenter worker consuming %r as group %r", settings.events_topic,
                 settings.group)
        try:
            await rt.pipeline.run()
        except Exception as exc:
            # In-memory states may be ahead of Redis now; restarting from the last commit
            # (with states re-read from Redis) is the only safe way on.
            log.critical("pipeline failed, stopping the worker: %r", exc)
            await app.crash(exc)
        finally:
            for relay in rt.relays:
                relay.stop()
            await asyncio.gather(*relays)

    async def maintain_model() -> None:
        if not rt.started or rt.stopping:
            return
        try:
            await rt.pipeline.maintain(int(settings.rescore_per_s * settings.model_poll_s))
        except Exception as exc:  # a failed round is retried at the next one
            log.warning("model sync / re-scoring failed: %r", exc)

    @app.timer(interval=60.0)
    async def release_memory() -> None:
        # Cyclic garbage that reached the oldest generation (aiokafka's dropped fetch
        # results hold their buffers) waits for a full collection, which CPython's own rule
        # runs rarely with a big heap; RSS rose ~10 MB/min without this. A collection takes
        # ~46 ms per 30k cached customers (382 ms at 200k; BENCHMARKS.md), more when it has
        # much garbage to free (130-260 ms seen in the soak). Then give freed memory back.
        started = time.perf_counter()
        freed = gc.collect()
        native_memory.trim()
        log.debug("full GC: %d objects freed in %.0f ms", freed,
                  (time.perf_counter() - started) * 1000)

    def fetched() -> float:
        return rt.pipeline.reader.last_records if rt.pipeline.reader is not None else 0.0
    lag = LagWatch(rt.lag_reader, rt.health, rt.metrics, fetched)

    async def read_lag() -> None:
        if rt.started and not rt.stopping:
            await lag.read()

    async def observe() -> None:
        if not rt.started:
            return
        try:
            now_ms = int(time.time() * 1000)
            rt.metrics.assigned.set(rt.pipeline.assigned())
            rt.metrics.cached.set(len(rt.pipeline.core.cache))
            rt.metrics.health_ok.set(0 if rt.problems() else 1)
            sizes = await refresh_sizes(rt.pipeline)
            totals = lag.totals(now_ms)
            if totals is not None:  # the last lag read's: never waits for the broker
                rt.dashboard.sample(rt.status(), sizes, *totals)
        except Exception as exc:  # monitoring must never stop the worker
            log.warning("size refresh failed: %s", reason(exc))

    @app.task
    async def rounds() -> None:
        # paced from their end, not Faust timers (stream.monitor says why)
        await asyncio.gather(every(settings.model_poll_s, maintain_model),
                             every(2.0, read_lag), every(2.0, observe))

    # mode types receivers with a positional-only first parameter, which def cannot spell
    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def shutdown(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        try:  # with the broker or Redis gone, closing must not hang the process forever
            await asyncio.wait_for(rt.stop(), 45)
        except TimeoutError:
            log.error("shutdown did not finish in 45 s (broker or Redis unreachable?); "
                      "uncommitted events will be re-delivered and deduplicated")

    web.register(app, rt)
    app.segmenter_runtime = rt  # type: ignore[attr-defined]
    return app


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Run one worker until SIGINT/SIGTERM."""
    # The hot path allocates many short-lived objects and keeps many long-lived ones (the
    # state cache); default GC thresholds rescan them far too often (~15% of CPU measured).
    # The start-up heap is never rescanned. A young collection runs when tracked objects
    # grew by more than the batches in flight hold (~5 per record, two or three batches):
    # at 50,000 it ran every ~20k events and rescanned a live batch for nothing (27 ms each,
    # ~1 us per event, nothing collected; BENCHMARKS.md). Cycles are still freed: the
    # once-a-minute full collection (release_memory) takes them. Full collections otherwise
    # keep CPython's amortised rule (gen2 threshold 10): with a larger one, cyclic garbage
    # (exceptions with their frames, asyncio callbacks) piled up for hours.
    gc.collect()
    gc.freeze()
    gc.set_threshold(max(500_000, 25 * settings.batch_max), 50, 10)
    native_memory.tune()
    app = create_app(settings)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    code = 0
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    # Faust's consumer thread does not stop when the broker is gone; it must not keep a
    # stopped worker alive forever.
    others = [t for t in threading.enumerate()
              if t is not threading.main_thread() and not t.daemon]
    for t in others:
        t.join(5)
    if any(t.is_alive() for t in others):
        log.error("threads still running after shutdown (broker unreachable?); exiting")
        logging.shutdown()
        sys.stdout.flush()
        os._exit(code)
    sys.exit(code)


async def refresh_sizes(pipeline: EventPipeline) -> dict[str, int]:
    """Read segment and audience sizes from Redis into the gauges; returns the segments'."""
    sizes = await pipeline.store.sizes()
    for sid, n in sizes.items():
        pipeline.metrics.segment_size.labels(sid).set(n)
    gauge = pipeline.metrics.audience_size
    members = await pipeline.audiences.sizes()
    for aid, n in members.items():
        gauge.labels(aid).set(n)
    for (aid,) in [k for k in gauge._metrics if k[0] not in members]:  # deleted ones
        gauge.remove(aid)
    return sizes
