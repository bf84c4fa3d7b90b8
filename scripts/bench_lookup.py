"""Page-load lookup latency: HTTP and Redis at a fixed request rate, vs a plain HGETALL loop.

A worker runs on the embedded stack (or ``SEGMENTER_KAFKA`` / ``SEGMENTER_REDIS_URL``) with
segments for simulated customers. Then, in one run:

- **http**: ``GET /customers/<id>/segment`` on one keep-alive connection at ``--rate``/s;
- **redis**: ``HGETALL seg:customer:{<id>}`` on one connection at ``--rate``/s;
- **baseline**: the same ``HGETALL`` back to back, unpaced.

Paced latencies are measured from the real send time while the client keeps to its schedule,
and from the *scheduled* time when it falls behind, so a stall also counts for the requests
queued behind it (no coordinated omission) while the client's own sleep overshoot does not.

Usage: ``python -m scripts.bench_lookup [--rate 500]``.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import itertools
import os
import random
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable

import redis

from models.simulator import ShopSimulator
from scripts.bench import produce_topic
from stream.demo import worker_health
from stream.embedded import embedded_stack, free_port, stop_process
from stream.settings import Settings


def percentiles(ms: list[float]) -> dict[str, float]:
    s = sorted(ms)
    return {"p50": s[len(s) // 2], "p99": s[int(len(s) * 0.99)], "max": s[-1],
            "mean": statistics.fmean(s)}


def paced(call: Callable[[], object], rate: float, n: int) -> list[float]:
    """Latencies (ms) from each request's scheduled time."""
    out = []
    start = time.perf_counter()
    for i in range(n):
        due = start + i / rate
        now = time.perf_counter()
        if now < due:  # on schedule: wait, and time from the real send (the client's own
            time.sleep(due - now)  # sleep overshoot is not the server's latency)
            ref = time.perf_counter()
        else:  # behind schedule: the backlog counts (no coordinated omission)
            ref = due
        call()
        out.append((time.perf_counter() - ref) * 1000)
    return out


def unpaced(call: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        call()
        out.append((time.perf_counter() - t) * 1000)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rate", type=float, default=500.0)
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--customers", type=int, default=3000)
    args = ap.parse_args(argv)
    with embedded_stack() as (k, r):
        s = Settings.from_env({"SEGMENTER_KAFKA": os.environ.get("SEGMENTER_KAFKA") or k.url,
                               "SEGMENTER_REDIS_URL": os.environ.get("SEGMENTER_REDIS_URL")
                               or r.url, "SEGMENTER_WEB_PORT": str(free_port()),
                               "SEGMENTER_EVENTS_TOPIC": f"lookup-{os.getpid()}"})
        sim = ShopSimulator(args.customers, seed=2, days=10)

        events = list(sim.history())
        asyncio.run(produce_topic(s, events))
        proc = subprocess.Popen([sys.executable, "-m", "stream.cli", "worker"],
                                env={**os.environ, **s.with_env()},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            rc = redis.Redis.from_url(s.redis_url)
            ids = sorted(sim.truth)
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:  # measure once the worker has caught up
                if worker_health(s.web_port).get("processed", 0) >= len(events):
                    break
                time.sleep(0.5)
            rng = random.Random(0)
            picks = [rng.choice(ids) for _ in range(args.requests)]
            it = itertools.cycle(picks)
            conn = http.client.HTTPConnection("127.0.0.1", s.web_port, timeout=5)

            def http_get() -> None:
                cid = next(it)
                conn.request("GET", f"/customers/{urllib.parse.quote(cid, safe='')}/segment")
                resp = conn.getresponse()
                body = resp.read()
                assert resp.status == 200, body

            def redis_get() -> None:
                assert rc.hgetall(f"{s.redis_prefix}customer:{{{next(it)}}}")

            for _ in range(200):  # warm up connections and caches
                http_get()
                redis_get()
            results = {
                f"HTTP GET at {args.rate:.0f}/s": paced(http_get, args.rate, args.requests),
                f"Redis HGETALL at {args.rate:.0f}/s": paced(redis_get, args.rate,
                                                             args.requests),
                "baseline: HGETALL loop, unpaced": unpaced(redis_get, args.requests),
            }
            health = worker_health(s.web_port)
        finally:
            stop_process(proc, 30)
    base = percentiles(results["baseline: HGETALL loop, unpaced"])
    print(f"{args.requests:,} lookups each over {len(ids):,} customers "
          f"(worker processed {health['processed']:,} events)")
    print(f"{'':34}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'p99 / baseline':>16}")
    for name, ms in results.items():
        p = percentiles(ms)
        print(f"{name:34}{p['p50']:9.3f}{p['p99']:9.3f}{p['max']:9.2f}"
              f"{p['p99'] / base['p99']:15.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
