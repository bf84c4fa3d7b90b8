"""Soak: a fixed event rate for a long time on one worker (issue #6).

Starts the embedded stack (or uses ``SEGMENTER_KAFKA`` / ``SEGMENTER_REDIS_URL``), one
``segmenter worker`` and ``segmenter simulate --rate R`` (live shoppers stamped with the
current time), then samples every ``--every`` seconds: events/s, consumer lag (from the
broker, via the worker's gauge), freshness p99 (Kafka arrival to Redis) over the interval (from the
worker's histogram), worker RSS, Redis memory. Prints a table and a summary: lag bounded,
p99, RSS at start and end.

Usage: ``python -m scripts.soak [--rate 25000] [--minutes 10] [--customers 100000]``
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import redis

from stream.embedded import embedded_stack, free_port, stop_process
from stream.settings import Settings


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def total(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def buckets(text: str) -> dict[float, float]:
    out = {}
    for le, v in re.findall(r'^segmenter_event_to_segment_seconds_bucket\{le="([^"]+)"\} (\S+)$',
                            text, re.M):
        out[float(le)] = float(v)
    return out


def quantile(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """Upper bucket bound holding the ``q`` quantile of the observations in between."""
    delta = sorted((le, after[le] - before.get(le, 0.0)) for le in after)
    n = delta[-1][1] if delta else 0
    if n <= 0:
        return None
    return next(le for le, c in delta if c >= q * n)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main(argv: list[str] | None = None) -> int:
    """Run the soak and print what it saw."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=25_000)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--every", type=float, default=30)
    args = ap.parse_args(argv)
    with embedded_stack() as (k, r):
        uid = uuid.uuid4().hex[:6]
        tuning = {k: v for k, v in os.environ.items()  # e.g. SEGMENTER_STATE_CACHE
                  if k.startswith("SEGMENTER_")}
        settings = Settings.from_env({
            **tuning,
            "SEGMENTER_KAFKA": os.environ.get("SEGMENTER_KAFKA") or k.url,
            "SEGMENTER_REDIS_URL": os.environ.get("SEGMENTER_REDIS_URL") or r.url,
            "SEGMENTER_EVENTS_TOPIC": f"soak-{uid}", "SEGMENTER_GROUP": f"soak-{uid}",
            "SEGMENTER_REDIS_PREFIX": f"soak{uid}:", "SEGMENTER_WEB_PORT": str(free_port()),
            "SEGMENTER_PARTITIONS": "4"})
        env = {**os.environ, **settings.with_env()}
        logs = Path(os.environ.get("TMPDIR", "/tmp"))
        with open(logs / f"soak-worker-{uid}.log", "wb") as wl, \
                open(logs / f"soak-sim-{uid}.log", "wb") as sl:
            worker = subprocess.Popen([sys.executable, "-m", "stream.cli", "worker"], env=env,
                                      stdout=wl, stderr=subprocess.STDOUT)
            time.sleep(8)  # join the group before traffic starts
            sim = subprocess.Popen(
                [sys.executable, "-m", "stream.cli", "simulate", "--rate", str(args.rate),
                 "--customers", str(args.customers), "--days", "0"],
                env=env, stdout=sl, stderr=subprocess.STDOUT)
        red = redis.Redis.from_url(settings.redis_url)
        rows = []
        try:
            started = time.monotonic()
            prev_text, prev_t = scrape(settings.web_port), time.monotonic()
            rss_start = rss_mb(worker.pid)
            cmds0 = int(red.info("stats")["total_commands_processed"])
            events0 = total(prev_text, "segmenter_events_total")
            print(f"{'min':>5} {'events/s':>9} {'lag':>8} {'p99 s':>7} {'RSS MB':>7} "
                  f"{'Redis MB':>9}", flush=True)
            while time.monotonic() - started < args.minutes * 60:
                time.sleep(args.every)
                assert worker.poll() is None and sim.poll() is None, "a process died"
                text, now = scrape(settings.web_port), time.monotonic()
                rate = (total(text, "segmenter_events_total")
                        - total(prev_text, "segmenter_events_total")) / (now - prev_t)
                lag = total(text, "segmenter_consumer_lag")
                p99 = quantile(buckets(prev_text), buckets(text), 0.99)
                mem = int(red.info("memory")["used_memory"]) / 2**20
                row = ((now - started) / 60, rate, lag, p99, rss_mb(worker.pid), mem)
                rows.append(row)
                print(f"{row[0]:>5.1f} {rate:>9,.0f} {lag:>8,.0f} "
                      f"{'-' if p99 is None else f'{p99:.3g}':>7} {row[4]:>7.0f} {mem:>9.0f}",
                      flush=True)
                prev_text, prev_t = text, now
            cmds = int(red.info("stats")["total_commands_processed"]) - cmds0
            per_event = cmds / max(1.0, total(text, "segmenter_events_total") - events0)
        finally:
            stop_process(sim, 10)
            stop_process(worker, 30)
            red.close()
    steady = rows[len(rows) // 5:] or rows  # after the first fifth: warm-up done
    lags = [r[2] for r in steady]
    p99s = [r[3] for r in steady if r[3] is not None]
    print(f"\nrate asked {args.rate:,.0f}/s, achieved (median) "
          f"{sorted(r[1] for r in steady)[len(steady) // 2]:,.0f}/s over {args.minutes:g} min")
    print(f"lag: max {max(lags):,.0f} events, last {lags[-1]:,.0f}")
    print(f"event->segment p99 per interval: max {max(p99s, default=0):.3g} s, median "
          f"{sorted(p99s)[len(p99s) // 2] if p99s else 0:.3g} s (histogram bucket bounds)")
    print(f"Redis commands per event (all clients; a script call counts once): "
          f"{per_event:.2f}")
    print(f"worker RSS: start {rss_start:.0f} MB, end {rows[-1][4]:.0f} MB; after warm-up "
          f"{steady[0][4]:.0f} -> {steady[-1][4]:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
