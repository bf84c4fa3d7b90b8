"""Scale figures (issue #17 item 6): 1, 2 and 3 workers in one consumer group on a
12-partition events topic, with one Redis and with a Redis Cluster, side by side in one run.

The broker is Apache Kafka (``--brokers`` KRaft nodes from the jars the test suite uses,
fetched by Maven into ``~/.cache/segmenter``; needs Java 17), or the embedded one with
``--embedded``, or ``SEGMENTER_KAFKA``. Redis is one embedded Valkey and a cluster of three
Valkey primaries (as ``SEGMENTER_TEST_REDIS=cluster`` starts them for the tests), both on
this machine. One topic of simulated events is produced once; every run is a fresh consumer
group and key prefix reading it from the start with real ``segmenter worker`` processes
(:func:`scripts.bench.worker_run`: events/s summed over the group, from when every worker
has processed events, i.e. the group has formed and its first rebalances are done, to the
last event).

On one machine every worker, the broker and Redis share the same cores, so the figures say
how the work divides, not what separate machines would do: read them with the CPU per event
printed below the table.

Usage: ``python -m scripts.bench_scale [--events 300000] [--customers 20000]
[--partitions 12] [--workers 1,2,3] [--runs 1] [--brokers 1] [--embedded] [--single-only]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import statistics
import sys
import uuid
from collections.abc import Iterator

from models.simulator import ShopSimulator
from scripts.bench import produce_topic, worker_run
from stream.embedded import free_port, start_kafka, start_redis
from stream.settings import Settings


@contextlib.contextmanager
def kafka(brokers: int, embedded: bool) -> Iterator[str]:
    """Bootstrap servers: ``SEGMENTER_KAFKA``, the embedded broker, or Apache Kafka."""
    if os.environ.get("SEGMENTER_KAFKA"):
        yield os.environ["SEGMENTER_KAFKA"]
    elif embedded:
        server = start_kafka()
        try:
            yield server.url
        finally:
            server.stop()
    else:  # the test suite's harness: the same pinned jars and KRaft set-up as CI
        from tests.integration.apache_kafka import apache_kafka

        with apache_kafka(brokers) as cluster:
            yield cluster.bootstrap


@contextlib.contextmanager
def redis_servers(single_only: bool) -> Iterator[dict[str, str]]:
    """``{"one Redis": url}`` and, unless ``single_only``, ``{"Redis Cluster": url}``."""
    one = start_redis()
    try:
        if single_only:
            yield {"one Redis": one.url}
            return
        from tests.integration.redis_cluster import redis_cluster

        with redis_cluster(3) as url:
            yield {"one Redis": one.url, "Redis Cluster": url}
    finally:
        one.stop()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--customers", type=int, default=20_000)
    ap.add_argument("--partitions", type=int, default=12)
    ap.add_argument("--workers", default="1,2,3", help="worker counts, comma-separated")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--brokers", type=int, default=1, help="Apache Kafka nodes")
    ap.add_argument("--embedded", action="store_true", help="the embedded broker instead")
    ap.add_argument("--single-only", action="store_true", help="no Redis Cluster")
    args = ap.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]
    events = list(itertools.islice(ShopSimulator(args.customers, seed=1, days=30).history(),
                                   args.events))
    total = len(events)
    rates: dict[tuple[str, int], list[float]] = {}
    cpu: dict[tuple[str, int], dict[str, float]] = {}
    with kafka(args.brokers, args.embedded) as bootstrap, \
            redis_servers(args.single_only) as redis_urls:
        topic = f"scale-{uuid.uuid4().hex[:6]}"
        tuning = {k: v for k, v in os.environ.items()
                  if k.startswith("SEGMENTER_") and k not in ("SEGMENTER_KAFKA",
                                                              "SEGMENTER_REDIS_URL")}
        base = {**tuning, "SEGMENTER_KAFKA": bootstrap, "SEGMENTER_EVENTS_TOPIC": topic,
                "SEGMENTER_PARTITIONS": str(args.partitions)}
        first = Settings.from_env({**base, "SEGMENTER_REDIS_URL": next(iter(redis_urls.values()))})
        asyncio.run(produce_topic(first, events))
        print(f"{total:,} events of {args.customers:,} customers on {topic} "
              f"({args.partitions} partitions, {bootstrap})", flush=True)
        for run in range(args.runs):
            for (kind, url), n in itertools.product(redis_urls.items(), counts):
                uid = uuid.uuid4().hex[:6]
                s = Settings.from_env({
                    **base, "SEGMENTER_REDIS_URL": url, "SEGMENTER_GROUP": f"scale-{uid}",
                    "SEGMENTER_REDIS_PREFIX": f"s{uid}:", "SEGMENTER_WEB_PORT": str(free_port()),
                    "SEGMENTER_REDIS_CLUSTER": "1" if kind == "Redis Cluster" else "0"})
                used: dict[str, float] = {}
                rate = worker_run(s, total, workers=n, cpu_of=used, joined=True)
                rates.setdefault((kind, n), []).append(rate)
                for k, v in used.items():
                    cpu.setdefault((kind, n), {}).setdefault(k, 0.0)
                    cpu[(kind, n)][k] += v
                print(f"run {run + 1}: {kind}, {n} worker(s): {rate:,.0f} events/s", flush=True)
    print(f"\n{total:,} events, {args.partitions} partitions, medians of {args.runs}; CPU "
          "per timed event summed over the group's workers (main threads; with helpers)")
    print("| Redis | workers | events/s | vs 1 worker | µs CPU main | µs CPU with helpers |")
    print("|---|---:|---:|---:|---:|---:|")
    for (kind, n), got in rates.items():
        one = statistics.median(rates.get((kind, counts[0]), got))
        used = cpu.get((kind, n), {})
        per_event = max(used.get("events", 0.0), 1.0) / 1e6
        print(f"| {kind} | {n} | {statistics.median(got):,.0f} | "
              f"{statistics.median(got) / one:.2f}x | {used.get('main', 0) / per_event:.1f} | "
              f"{used.get('all', 0) / per_event:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
