"""End-to-end throughput of one worker vs the minimal baseline loop, side by side.

Both read the same pre-produced topic of simulated events on the embedded stack (or on
``SEGMENTER_KAFKA`` / ``SEGMENTER_REDIS_URL``):

- **worker**: a real ``segmenter worker`` process (validation, dedup, features, learning,
  assignment, atomic Lua writes, change messages, commits), timed from its first to its
  last processed event via ``/health``;
- **baseline**: aiokafka ``getmany`` + the same features + NumPy assign + pipelined
  ``HSET`` of the five SPEC fields + commit, in this process, nothing else.

Usage: ``python -m scripts.bench [--events 200000] [--customers 5000] [--runs 3] [--scale]
[--inline] [--variant SEGMENTER_X=VALUE ...] [--checkout DIR]`` (``--scale`` adds two workers
in one consumer group on the same topic, for 1 vs 2 workers; ``--inline`` adds a worker
without helper processes; ``--variant`` adds a worker with those settings; ``--checkout``
adds a worker run from another checkout, for before/after a change; all side by side in
every run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

import numpy as np
import orjson

from models.simulator import ShopSimulator
from scripts.baseline import baseline
from stream.demo import worker_health
from stream.embedded import embedded_stack, free_port, stop_process
from stream.kafka_io import ensure_topics, make_producer
from stream.produce import produce
from stream.settings import Settings


async def produce_topic(settings: Settings, events: list[dict[str, object]]) -> None:
    await ensure_topics(settings)
    producer = make_producer(settings)
    await producer.start()
    try:
        await produce(producer, settings.events_topic,
                      [(str(e["customer_id"]).encode(), orjson.dumps(e)) for e in events])
    finally:
        await producer.stop()


def stage_seconds(port: int) -> dict[str, float]:
    """A worker's ``segmenter_busy_seconds_total`` by stage, from its ``/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {m[1]: float(m[2]) for m in re.finditer(
        r'^segmenter_busy_seconds_total\{stage="(\w+)"\} (\S+)$', text, re.M)}


def cpu_seconds(pid: int) -> dict[str, float]:
    """CPU time (user + system) of a worker: its main thread (``main``) and the whole
    process with its helper processes (``all``). Linux ``/proc``."""
    tick = os.sysconf("SC_CLK_TCK")

    def used(path: str) -> float:
        try:
            with open(path) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / tick

    children = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
            children += f.read().split()
    return {"main": used(f"/proc/{pid}/task/{pid}/stat"),
            "all": used(f"/proc/{pid}/stat") + sum(used(f"/proc/{c}/stat") for c in children)}


def redis_cpu(url: str) -> float:
    """CPU seconds (user + system) the Redis server has used, from ``INFO cpu``."""
    import redis  # the synchronous client: read between runs, not on an event loop

    client = redis.Redis.from_url(url)
    try:
        info = client.info("cpu")
    finally:
        client.close()
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def worker_run(settings: Settings, total: int, workers: int = 1,
               stages: dict[str, float] | None = None,
               cpu: dict[str, float] | None = None, code: str | None = None,
               cpu_of: dict[str, float] | None = None, joined: bool = False) -> float:
    """Real worker processes in one group; events/s from the first to the last processed
    event (summed over the workers); adds the first worker's time by stage to ``stages``
    and its CPU time (:func:`cpu_seconds`) to ``cpu``, and every worker's CPU time summed to
    ``cpu_of`` (with the timed events, ``events``). ``code``: another checkout of this
    repository to run the workers from (same Python environment). ``joined``: time from
    when every worker has processed events (the group's first rebalances done), not from
    the first event."""
    env = {**os.environ, **settings.with_env()}
    if code is not None:  # its modules come first on the path, before the installed ones
        env["PYTHONPATH"] = os.path.abspath(code)
    ports = [settings.web_port] + [free_port() for _ in range(workers - 1)]
    procs = []
    for i, port in enumerate(ports):
        log_path = os.path.join(tempfile.gettempdir(), f"bench-worker-{settings.group}-{i}.log")
        with open(log_path, "wb") as log:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "stream.cli", "worker"],
                env={**env, "SEGMENTER_WEB_PORT": str(port)}, stdout=log,
                stderr=subprocess.STDOUT, cwd=code))
    first_t, first_n = 0.0, 0
    before: dict[str, float] = {}
    cpu_before: dict[str, float] = {}
    group_before: list[dict[str, float]] = []
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            each = [worker_health(p).get("processed", 0) for p in ports]
            n, now = sum(each), time.perf_counter()
            if (all(each) if joined else n) and not first_t:
                first_t, first_n = now, n
                before = stage_seconds(ports[0])  # not the idle wait for the first events
                cpu_before = {**cpu_seconds(procs[0].pid),
                              "redis": redis_cpu(settings.redis_url)} if cpu is not None else {}
                group_before = [cpu_seconds(p.pid) for p in procs]
            if n >= total:
                if stages is not None:
                    for stage, took_s in stage_seconds(ports[0]).items():
                        stages[stage] = stages.get(stage, 0.0) + took_s - before.get(stage, 0)
                if cpu is not None:
                    used = {**cpu_seconds(procs[0].pid), "redis": redis_cpu(settings.redis_url)}
                    for k, v in used.items():
                        cpu[k] = cpu.get(k, 0.0) + v - cpu_before.get(k, 0.0)
                if cpu_of is not None:
                    for proc, was in zip(procs, group_before, strict=True):
                        for k, v in cpu_seconds(proc.pid).items():
                            cpu_of[k] = cpu_of.get(k, 0.0) + v - was.get(k, 0.0)
                    cpu_of["events"] = cpu_of.get("events", 0.0) + n - first_n
                if n == first_n:
                    raise RuntimeError(f"all {n:,} events were processed before the first "
                                       "poll: too few to time, produce more (--events)")
                return (n - first_n) / (now - first_t)
            time.sleep(0.05)
        raise RuntimeError(f"workers did not finish; see {tempfile.gettempdir()}")
    finally:
        for proc in procs:
            stop_process(proc, 30)


def setting(text: str) -> tuple[str, str]:
    """``SEGMENTER_X=VALUE`` as a pair (an argparse type).

    >>> setting("SEGMENTER_LEARN_PROCESS=true")
    ('SEGMENTER_LEARN_PROCESS', 'true')
    """
    name, eq, value = text.partition("=")
    if not eq or not name.startswith("SEGMENTER_"):
        raise argparse.ArgumentTypeError(f"expected SEGMENTER_NAME=VALUE, got {text!r}")
    return name, value


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--customers", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--scale", action="store_true",
                    help="also run 2 workers in one group on the same topic (1 vs 2 workers)")
    ap.add_argument("--inline", action="store_true",
                    help="also run a worker without helper processes")
    ap.add_argument("--variant", action="append", default=[], type=setting,
                    metavar="SEGMENTER_X=VALUE",
                    help="also run a worker with this setting (repeat for several; all in "
                         "one variant), side by side with the others in every run")
    ap.add_argument("--checkout", metavar="DIR",
                    help="also run a worker from another checkout of this repository (e.g. "
                         "the commit before a change), side by side in every run")
    args = ap.parse_args(argv)
    sim = ShopSimulator(args.customers, seed=1, days=30)
    events = list(itertools.islice(sim.history(), args.events))
    total = len(events)
    centres = np.random.default_rng(0).normal(size=(6, 18))
    with embedded_stack() as (k, r):
        kafka = os.environ.get("SEGMENTER_KAFKA") or k.url
        redis = os.environ.get("SEGMENTER_REDIS_URL") or r.url
        tuning = {k: v for k, v in os.environ.items()  # e.g. SEGMENTER_BATCH_MAX to compare
                  if k.startswith("SEGMENTER_") and k not in ("SEGMENTER_KAFKA",
                                                              "SEGMENTER_REDIS_URL")}
        base = Settings.from_env({**tuning, "SEGMENTER_KAFKA": kafka, "SEGMENTER_REDIS_URL": redis,
                                  "SEGMENTER_EVENTS_TOPIC": f"bench-{uuid.uuid4().hex[:6]}",
                                  "SEGMENTER_PARTITIONS": "4"})
        asyncio.run(produce_topic(base, events))
        variant = dict(args.variant)
        w_rates, b_rates, two_rates, inline_rates, v_rates, c_rates = [], [], [], [], [], []
        w_stages: dict[str, float] = {}
        w_cpu: dict[str, float] = {}
        i_cpu: dict[str, float] = {}
        v_cpu: dict[str, float] = {}
        v_stages: dict[str, float] = {}
        c_cpu: dict[str, float] = {}
        c_stages: dict[str, float] = {}
        b_stages: dict[str, float] = {}
        for i in range(args.runs):
            uid = uuid.uuid4().hex[:6]
            s = Settings.from_env({**base.with_env(), "SEGMENTER_GROUP": f"bench-{uid}",
                                   "SEGMENTER_REDIS_PREFIX": f"b{uid}:",
                                   "SEGMENTER_WEB_PORT": str(free_port())})
            w_rates.append(worker_run(s, total, stages=w_stages, cpu=w_cpu))
            b_rates.append(asyncio.run(baseline(s, total, centres, b_stages)))
            if args.scale:
                two = Settings.from_env({**s.with_env(), "SEGMENTER_GROUP": f"bench2-{uid}",
                                         "SEGMENTER_REDIS_PREFIX": f"b2{uid}:"})
                two_rates.append(worker_run(two, total, workers=2))
            if args.inline:
                one = Settings.from_env({**s.with_env(), "SEGMENTER_GROUP": f"benchi-{uid}",
                                         "SEGMENTER_REDIS_PREFIX": f"bi{uid}:",
                                         "SEGMENTER_PARSE_PROCESS": "false",
                                         "SEGMENTER_LEARN_PROCESS": "false"})
                inline_rates.append(worker_run(one, total, cpu=i_cpu))
            if variant:
                var = Settings.from_env({**s.with_env(), "SEGMENTER_GROUP": f"benchv-{uid}",
                                         "SEGMENTER_REDIS_PREFIX": f"bv{uid}:", **variant})
                v_rates.append(worker_run(var, total, stages=v_stages, cpu=v_cpu))
            if args.checkout:
                other = Settings.from_env({**s.with_env(), "SEGMENTER_GROUP": f"benchc-{uid}",
                                           "SEGMENTER_REDIS_PREFIX": f"bc{uid}:"})
                c_rates.append(worker_run(other, total, stages=c_stages, cpu=c_cpu,
                                          code=args.checkout))
            print(f"run {i + 1}: worker {w_rates[-1]:,.0f} ev/s  baseline {b_rates[-1]:,.0f} "
                  f"ev/s ({w_rates[-1] / b_rates[-1]:.2f}x)"
                  + (f"  2 workers {two_rates[-1]:,.0f} ev/s" if two_rates else "")
                  + (f"  no helpers {inline_rates[-1]:,.0f} ev/s" if inline_rates else "")
                  + (f"  variant {v_rates[-1]:,.0f} ev/s ({v_rates[-1] / b_rates[-1]:.2f}x)"
                     if v_rates else "")
                  + (f"  checkout {c_rates[-1]:,.0f} ev/s (this/checkout "
                     f"{w_rates[-1] / c_rates[-1]:.2f}x)" if c_rates else ""),
                  flush=True)
    w, b = statistics.median(w_rates), statistics.median(b_rates)
    print(f"\n{total:,} events, {args.customers:,} customers, 4 partitions, medians of "
          f"{args.runs}:")
    print(f"  segmenter worker : {w:>10,.0f} events/s")
    print(f"  baseline loop    : {b:>10,.0f} events/s")
    print(f"  ratio worker/baseline: {w / b:.2f}x")
    per_event = args.runs * total / 1e6
    print("  main-thread time per event, µs (all runs; fetch includes waiting):")
    for name, st in (("worker", w_stages), ("baseline", b_stages), ("variant", v_stages),
                     ("checkout", c_stages)):
        if not st:
            continue
        print(f"    {name:<8} " + "  ".join(f"{k} {v / per_event:.1f}" for k, v in st.items())
              + f"  | total {sum(st.values()) / per_event:.1f}")
    # CPU time per event is steadier than events/s on a shared machine: compare it too
    for name, used in (("worker", w_cpu), ("worker without helpers", i_cpu),
                       ("variant", v_cpu), ("checkout", c_cpu)):
        if used:
            print(f"  {name} CPU per event: main thread {used['main'] / per_event:.1f} µs, "
                  f"with helper processes {used['all'] / per_event:.1f} µs, Redis server "
                  f"{used['redis'] / per_event:.1f} µs")
    if inline_rates:
        n = statistics.median(inline_rates)
        print(f"  worker without helper processes: {n:>10,.0f} events/s ({n / b:.2f}x baseline)")
    if v_rates:
        v = statistics.median(v_rates)
        named = " ".join(f"{k}={x}" for k, x in variant.items())
        print(f"  worker with {named}: {v:>10,.0f} events/s ({v / b:.2f}x baseline)")
    if c_rates:
        c = statistics.median(c_rates)
        ratios = [a / o for a, o in zip(w_rates, c_rates, strict=True)]
        print(f"  worker from {args.checkout}: {c:>10,.0f} events/s; this/that per run "
              + ", ".join(f"{x:.2f}" for x in ratios)
              + f" (median {statistics.median(ratios):.2f}x)")
    if two_rates:
        t = statistics.median(two_rates)
        print(f"  2 workers, one group : {t:>10,.0f} events/s ({t / w:.2f}x one worker)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
