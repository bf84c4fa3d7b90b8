"""Freshness under load (issue #21): from just before an event is produced to its effect
being visible in Redis, for one ``segmenter worker`` and for the minimal loop, side by side.

On the embedded stack (or ``SEGMENTER_KAFKA`` / ``SEGMENTER_REDIS_URL``):

1. a warm-up history (simulated shoppers up to now) is produced, then a worker started: the
   rate at which it drains that backlog is its measured **capacity** (or ``--capacity``);
2. per load level (idle and ``--levels`` percent of capacity), a background load of live
   sessions is produced by a batched producer in another process, and probes are sent one
   at a time by a producer of their own (no linger): a **new** probe is the first event of a
   new customer, visible when its customer hash exists; a **change** probe is a large
   purchase of an earlier probe customer, visible when its ``segment`` differs from the one
   it had (probes that do not change it are counted, not timed). Redis is polled every 2 ms;
3. the same again with the minimal loop, reading from the end of the topic (``getmany``,
   per-customer features, NumPy assignment, one pipelined ``HSET`` per batch, commit), in a
   process of its own, with the same fetch settings as the worker. For the loop a change
   probe is visible when the customer's ``updated_at`` passes the send time (it writes every
   customer it sees).

Printed per system and level: probe latency p50/p95/p99 (ms), the load achieved, the
worker's own freshness histogram over the level (bucket bounds, from the records' Kafka
timestamps), the worker's main-thread time per stage over the level, and how busy the
machine's cores were (``/proc/stat``: on a shared 2-core machine a queue forms near 100%).

Usage: ``python -m scripts.bench_freshness [--probes 60] [--levels 25,50,75]
[--capacity N] [--warm 150000]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import multiprocessing as mp
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

import numpy as np
import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from models.simulator import DAY_MS, ShopSimulator
from scripts import freshness_load
from scripts.bench import produce_topic, stage_seconds
from scripts.soak import buckets, quantile, scrape
from stream.demo import worker_health
from stream.embedded import embedded_stack, free_port, stop_process
from stream.kafka_io import ensure_topics
from stream.settings import Settings


class Prober:
    """Sends probes one at a time and times them until Redis shows their effect."""

    def __init__(self, settings: Settings, prefix: str, loop: bool) -> None:
        self.settings, self.prefix, self.loop = settings, prefix, loop
        self.known: list[tuple[str, Any]] = []  # probe customers and their segment
        self.n = 0

    async def start(self) -> None:
        self.producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka, linger_ms=0,
                                         acks="all")
        await self.producer.start()
        self.redis = aioredis.from_url(self.settings.redis_url)

    async def close(self) -> None:
        await self.producer.stop()
        await self.redis.aclose()

    async def probe(self, change: bool) -> tuple[str, float | None]:
        """One probe: ``("new" | "change" | "unchanged", seconds or None)``."""
        now_ms = int(time.time() * 1000)
        self.n += 1
        if change and self.known:
            cid, before = self.known.pop(0)
            event = {"event_id": f"pc-{uuid.uuid4().hex}", "customer_id": cid,
                     "type": "purchase", "timestamp": now_ms,
                     "properties": {"amount": 2500.0 + random.random()}}  # noqa: S311
        else:
            change, before = False, None
            cid = f"probe-{uuid.uuid4().hex[:10]}"
            event = {"event_id": f"pn-{uuid.uuid4().hex}", "customer_id": cid,
                     "type": "page_view", "timestamp": now_ms, "properties": {}}
        key = f"{self.prefix}customer:{{{cid}}}"
        started = time.perf_counter()
        await self.producer.send_and_wait(self.settings.events_topic, orjson.dumps(event),
                                          key=cid.encode())
        deadline = started + 3.0
        while time.perf_counter() < deadline:
            if not change:
                seg = await self.redis.hget(key, "segment")
                if seg is not None:
                    took = time.perf_counter() - started
                    self.known.append((cid, seg))
                    return "new", took
            elif self.loop:
                at = await self.redis.hget(key, "updated_at")
                if at is not None and int(at) >= now_ms:
                    return "change", time.perf_counter() - started
            else:
                seg = await self.redis.hget(key, "segment")
                if seg is not None and seg != before:
                    return "change", time.perf_counter() - started
            await asyncio.sleep(0.002)
        return ("unchanged" if change else "new"), None


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000, q)) if xs else float("nan")


async def measure(prober: Prober, probes: int) -> dict[str, list[float] | int]:
    """``probes`` probes, alternating new and change ones, spaced irregularly."""
    out: dict[str, Any] = {"new": [], "change": [], "unchanged": 0, "lost": 0}
    for i in range(probes):
        kind, took = await prober.probe(change=i % 2 == 1)
        if took is None:
            out["unchanged" if kind == "unchanged" else "lost"] += 1
        else:
            out[kind].append(took)
        await asyncio.sleep(random.uniform(0.03, 0.12))  # noqa: S311 (not aligned to cycles)
    return out


def run_levels(name: str, settings: Settings, prefix: str, loop: bool, rates: list[float],
               probes: int, port: int | None, rows: list[str]) -> None:
    """Every load level against one system (already running and caught up)."""
    ctx = mp.get_context("spawn")
    for rate in rates:
        stop = ctx.Event()
        load = None
        if rate:
            load = ctx.Process(target=freshness_load.load, args=(
                settings.kafka, settings.events_topic, rate, stop,
                random.randrange(1 << 30)))  # noqa: S311
            load.start()
            time.sleep(3)  # the load reaches its rate
        if port and not rate:
            quiet(port)
        before = scrape(port) if port else ""
        st_before = stage_seconds(port) if port else {}
        t0, cpu0 = time.monotonic(), machine_cpu()
        n0 = worker_health(port).get("processed", 0) if port else 0

        async def go() -> dict[str, Any]:
            prober = Prober(settings, prefix, loop)
            await prober.start()
            try:
                await measure(prober, 4)  # warm the probe producer and known customers
                await asyncio.sleep(2)  # and let what they set off (re-scoring) pass
                return await measure(prober, probes)
            finally:
                await prober.close()
        got = asyncio.run(go())
        took, cpu1 = time.monotonic() - t0, machine_cpu()
        stop.set()
        if load is not None:
            load.join(10)
        both = got["new"] + got["change"]
        # on 2 shared cores a queue forms once they are busy: say how busy they were
        extra = f" | machine CPU busy {(cpu1[0] - cpu0[0]) / max(1, cpu1[1] - cpu0[1]):.0%}"
        if port:
            after = scrape(port)
            done = worker_health(port).get("processed", 0) - n0
            q50, q99 = (quantile(buckets(before), buckets(after), q) for q in (0.5, 0.99))
            stages = stage_seconds(port)
            busy = {k: v - st_before.get(k, 0.0) for k, v in stages.items()}
            extra += (f" | worker {done / took:,.0f} ev/s; own histogram p50 ≤ {q50} s, "
                     f"p99 ≤ {q99} s; main thread s/s: " + " ".join(
                         f"{k} {v / took:.2f}" for k, v in busy.items() if v / took >= 0.01))
        rows.append(
            f"{name:<8} {rate:>8,.0f}/s  all p50 {pct(both, 50):6.1f} p95 {pct(both, 95):6.1f} "
            f"p99 {pct(both, 99):6.1f} ms | new p50 {pct(got['new'], 50):6.1f} "
            f"p99 {pct(got['new'], 99):6.1f} (n={len(got['new'])}) | change p50 "
            f"{pct(got['change'], 50):6.1f} p99 {pct(got['change'], 99):6.1f} "
            f"(n={len(got['change'])}, not changed {got['unchanged']}, lost {got['lost']})"
            + extra)
        print(rows[-1], flush=True)


def machine_cpu() -> tuple[int, int]:
    """Busy and total jiffies of all cores since boot (Linux ``/proc/stat``)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle and iowait
    return sum(ticks) - idle, sum(ticks)


def quiet(port: int, timeout: float = 30) -> None:
    """Wait until the worker's freshness histogram stops growing: the warm-up's last batches
    are written (and observed) after the worker counts them processed, and must not be
    counted with the idle level's probes."""
    count = re.compile(r"^segmenter_event_to_segment_seconds_count (\S+)$", re.M)
    last, deadline = None, time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = count.search(scrape(port))
        now = found.group(1) if found else None
        if now is not None and now == last:
            return
        last = now
        time.sleep(0.5)  # the interval over which "no new observation" is judged


def wait_caught_up(port: int, total: int, timeout: float = 300) -> float:
    """Wait until the worker processed ``total`` events; its rate from first to last."""
    first_t, first_n = 0.0, 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = worker_health(port).get("processed", 0)
        now = time.perf_counter()
        if n and not first_t:
            first_t, first_n = now, n
        if n >= total:
            return (n - first_n) / max(1e-9, now - first_t)
        time.sleep(0.02)
    raise RuntimeError("the worker did not catch up")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--probes", type=int, default=60, help="probes per level and system")
    ap.add_argument("--levels", default="25,50,75", help="percent of capacity")
    ap.add_argument("--capacity", type=float, default=0.0,
                    help="events/s taken as capacity (default: measured on the warm-up)")
    ap.add_argument("--warm", type=int, default=150_000, help="warm-up events")
    args = ap.parse_args(argv)
    now = int(time.time() * 1000)
    sim = ShopSimulator(5000, seed=1, start_ms=now - 30 * DAY_MS, days=30)
    events = list(itertools.islice(sim.history(), args.warm))
    with embedded_stack() as (k, r):
        uid = uuid.uuid4().hex[:6]
        tuning = {k: v for k, v in os.environ.items() if k.startswith("SEGMENTER_")
                  and k not in ("SEGMENTER_KAFKA", "SEGMENTER_REDIS_URL")}
        s = Settings.from_env({
            **tuning, "SEGMENTER_KAFKA": os.environ.get("SEGMENTER_KAFKA") or k.url,
            "SEGMENTER_REDIS_URL": os.environ.get("SEGMENTER_REDIS_URL") or r.url,
            "SEGMENTER_EVENTS_TOPIC": f"fresh-{uid}", "SEGMENTER_GROUP": f"fresh-{uid}",
            "SEGMENTER_REDIS_PREFIX": f"f{uid}:", "SEGMENTER_WEB_PORT": str(free_port()),
            "SEGMENTER_PARTITIONS": str(freshness_load.PARTITIONS)})
        asyncio.run(ensure_topics(s))
        asyncio.run(produce_topic(s, events))
        log_path = os.path.join(tempfile.gettempdir(), f"fresh-worker-{uid}.log")
        rows: list[str] = []
        with open(log_path, "wb") as log:
            worker = subprocess.Popen([sys.executable, "-m", "stream.cli", "worker"],
                                      env={**os.environ, **s.with_env()}, stdout=log,
                                      stderr=subprocess.STDOUT)
        try:
            capacity = wait_caught_up(s.web_port, len(events))
            print(f"worker drained {len(events):,} warm-up events at {capacity:,.0f} ev/s",
                  flush=True)
            capacity = args.capacity or capacity
            rates = [0.0] + [capacity * float(p) / 100 for p in args.levels.split(",")]
            run_levels("worker", s, s.redis_prefix, False, rates, args.probes, s.web_port,
                       rows)
        finally:
            stop_process(worker, 30)
        ctx = mp.get_context("spawn")
        stop = ctx.Event()
        prefix = f"l{uid}:"
        loop = ctx.Process(target=freshness_load.loop, args=(
            s.kafka, s.redis_url, s.events_topic, prefix, s.fetch_wait_ms, stop))
        loop.start()
        try:
            async def first() -> None:  # the loop has read the backlog: a probe is visible
                prober = Prober(s, prefix, True)
                await prober.start()
                try:
                    for _ in range(300):
                        if (await prober.probe(False))[1] is not None:
                            return
                finally:
                    await prober.close()
            asyncio.run(first())
            run_levels("loop", s, prefix, True, rates, args.probes, None, rows)
        finally:
            stop.set()
            loop.join(10)
            with contextlib.suppress(Exception):
                loop.kill()
    print(f"\ncapacity {capacity:,.0f} ev/s; levels 0 and {args.levels}% of it; "
          f"{args.probes} probes per level (half new customers, half changes); ms:")
    for row in rows:
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
