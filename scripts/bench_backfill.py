"""A backfill end to end: ``segmenter replay FILE --wait`` into a running worker, as a user
runs it (issue #16: "a 1M-event backfill runs at the worker's full speed").

Writes N simulated events (30 days of history) to a gzipped JSON-lines file, starts the
embedded broker and Valkey and one ``segmenter worker``, then times ``segmenter replay FILE
--wait`` as a separate process: the replay sends while the worker consumes, and ``--wait``
returns once the worker's group has committed everything. Reported: the replay's own send
rate (from its summary) and the backfill rate end to end (events / wall time from the start
of the replay to the last commit), which is what the worker's full speed bounds.

Usage: ``python -m scripts.bench_backfill [--events 1000000] [--customers 20000]``
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import os
import subprocess
import sys
import tempfile
import time
import uuid

import orjson

from models.simulator import ShopSimulator
from stream.demo import worker_health
from stream.embedded import embedded_stack, free_port, stop_process
from stream.settings import Settings


def write_events(path: str, events: int, customers: int) -> int:
    """``events`` simulated events, in event-time order, gzipped JSON lines."""
    sim = ShopSimulator(customers, seed=5, days=30)
    n = 0
    with gzip.open(path, "wb", compresslevel=1) as out:
        for e in itertools.islice(sim.history(), events):
            out.write(orjson.dumps(e) + b"\n")
            n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    """Run the backfill and print the rates."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--customers", type=int, default=20_000)
    args = ap.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="backfill-")
    path = os.path.join(tmp, "history.jsonl.gz")
    total = write_events(path, args.events, args.customers)
    print(f"{total:,} events of {args.customers:,} customers in {path} "
          f"({os.path.getsize(path) / 1e6:.0f} MB gzipped)", flush=True)
    with embedded_stack() as (kafka, redis):
        uid = uuid.uuid4().hex[:6]
        settings = Settings.from_env({
            "SEGMENTER_KAFKA": kafka.url, "SEGMENTER_REDIS_URL": redis.url,
            "SEGMENTER_EVENTS_TOPIC": f"backfill-{uid}", "SEGMENTER_GROUP": f"backfill-{uid}",
            "SEGMENTER_REDIS_PREFIX": f"bf{uid}:", "SEGMENTER_WEB_PORT": str(free_port()),
            "SEGMENTER_PARTITIONS": "4"})
        env = {**os.environ, **settings.with_env()}
        with open(os.path.join(tmp, "worker.log"), "wb") as log:
            worker = subprocess.Popen([sys.executable, "-m", "stream.cli", "worker"], env=env,
                                      stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while worker_health(settings.web_port).get("status") != "ok":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the worker did not start; see {tmp}/worker.log")
                time.sleep(0.5)
            started = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "stream.cli", "replay", path, "--wait",
                 "--wait-timeout", "900"], env=env, capture_output=True, text=True)
            took = time.perf_counter() - started
        finally:
            stop_process(worker, 60)
    print(done.stdout.strip())
    if done.returncode != 0:
        print(done.stderr[-2000:], file=sys.stderr)
        return done.returncode
    print(f"backfill end to end (replay start -> the worker's last commit): {took:.1f} s, "
          f"{total / took:,.0f} events/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
