"""The pure core alone (no I/O): ``Segmenter.apply`` + ``drain`` over simulated events, with
the worker's default settings, learning on and off, side by side.

Usage: ``python -m scripts.bench_core [--events 200000] [--customers 5000] [--runs 3]``
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import statistics
import sys
import time

import orjson

from models.core import Record, Segmenter
from models.simulator import ShopSimulator
from stream.settings import Settings


def rate(recs: list[Record], learn: bool, batch: int) -> float:
    cfg = dataclasses.replace(Settings().segmenter_config(), trains=True)
    if not learn:
        cfg = dataclasses.replace(cfg, update_every=10**12, update_every_days=0.0)
    seg = Segmenter(cfg)
    started = time.perf_counter()
    for i in range(0, len(recs), batch):
        seg.apply(seg.parse(recs[i:i + batch]), {})
        seg.drain()
    return len(recs) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    """Print events/s of the core with and without learning."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--customers", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    sim = ShopSimulator(args.customers, seed=1, days=30)
    events = list(itertools.islice(sim.history(), args.events))
    recs = [Record("events", hash(e["customer_id"]) % 4, i, e["customer_id"].encode(),
                   orjson.dumps(e)) for i, e in enumerate(events)]
    batch = Settings().batch_max
    on = [rate(recs, True, batch) for _ in range(args.runs)]
    off = [rate(recs, False, batch) for _ in range(args.runs)]
    print(f"{len(recs):,} events, batches of {batch:,}, medians of {args.runs}:")
    print(f"  core with learning    : {statistics.median(on):>9,.0f} events/s")
    print(f"  core without learning : {statistics.median(off):>9,.0f} events/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
