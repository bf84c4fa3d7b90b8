"""How long the worker's once-a-minute full garbage collection pauses it, by cache size.

Builds ``CustomerState`` objects from the states of simulated shoppers (as the worker's
cache holds them), with the worker's GC settings (start-up heap frozen), and times
``gc.collect()`` over them.

Usage: ``python -m scripts.gc_pause [--cached 30000,200000] [--runs 3]``
"""

from __future__ import annotations

import argparse
import gc
import itertools
import statistics
import sys
import time
from collections import OrderedDict

import orjson

from models.core import Record, Segmenter, SegmenterConfig
from models.simulator import ShopSimulator
from models.state import CustomerState


def main(argv: list[str] | None = None) -> int:
    """Print the median full-collection time per cache size."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cached", default="30000,200000")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    sim = ShopSimulator(3000, seed=1, days=30)
    seg = Segmenter(SegmenterConfig())
    recs = [Record("events", 0, i, e["customer_id"].encode(), orjson.dumps(e))
            for i, e in enumerate(itertools.islice(sim.history(), 20_000))]
    seg.apply(seg.parse(recs), {})
    blobs = [st.to_bytes() for st in seg.states.values()]
    del sim, seg, recs
    gc.collect()
    gc.freeze()  # as the worker does at start-up
    for n in (int(x) for x in args.cached.split(",")):
        states: OrderedDict[str, CustomerState] = OrderedDict(
            (f"c{i}", CustomerState.from_bytes(f"c{i}", blobs[i % len(blobs)]))
            for i in range(n))
        times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            gc.collect()
            times.append((time.perf_counter() - started) * 1000)
        print(f"{n:>9,} cached customers: full collection {statistics.median(times):,.0f} ms "
              f"(median of {args.runs}; {len(gc.get_objects()):,} tracked objects)")
        del states
    return 0


if __name__ == "__main__":
    sys.exit(main())
