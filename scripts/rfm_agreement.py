"""How often the sketched RFM scores agree with exact batch quintiles (issue #18: >= 95%).

Events go through the pure core (:class:`models.core.Segmenter`: validation, features, the
same states a worker keeps); the population of buyers is then counted into the bucketed
histogram of :mod:`models.rfm` (what ``seg:rfm`` holds) and every buyer is scored from its
quintiles. The reference scores each buyer against the exact quintiles of the raw values
(last purchase time, orders, revenue; :func:`models.rfm.exact_scores`, the same rule).
Reported per score, for all three together and for the named segment.

Usage: ``python -m scripts.rfm_agreement [--customers 3000] [--days 60] [--cdnow]``
"""

from __future__ import annotations

import argparse
import zlib
from typing import Any

import orjson

from models.config import SegmenterConfig
from models.core import Record, Segmenter
from models.rfm import Population, bucket_key, exact_scores, segment_name
from models.simulator import ShopSimulator
from models.state import CustomerState


def states_of(events: list[dict[str, Any]], partitions: int = 4) -> list[CustomerState]:
    """Customer states after ``events`` (in this order) through the core."""
    seg = Segmenter(SegmenterConfig(warmup=10**9, update_every=10**9, update_every_days=0.0,
                                    cache_size=10**7, allowed_lateness_ms=10**13))
    offsets = [0] * partitions
    recs = []
    for e in events:
        cid = e["customer_id"].encode()
        p = zlib.crc32(cid) % partitions
        recs.append(Record("events", p, offsets[p], cid, orjson.dumps(e)))
        offsets[p] += 1
    for i in range(0, len(recs), 20_000):
        seg.apply(seg.parse(recs[i:i + 20_000]), {})
    return list(seg.states.values())


def agreement(states: list[CustomerState]) -> dict[str, float]:
    """Share of buyers whose sketched score equals the exact one: per score, all three,
    and the named segment."""
    buyers = [s for s in states if s.orders_total]
    keys = [bucket_key(s.last_purchase_ts, s.orders_total, s.spend_total) for s in buyers]
    pop = Population()
    for k in keys:
        pop.add(k)
    q = pop.quintiles()
    sketched = [q.scores(k) for k in keys]
    exact = list(zip(exact_scores([s.last_purchase_ts for s in buyers]),
                     exact_scores([s.orders_total for s in buyers]),
                     exact_scores([s.spend_total for s in buyers]), strict=True))
    n = len(buyers) or 1
    out = {dim: sum(a[i] == b[i] for a, b in zip(sketched, exact, strict=True)) / n
           for i, dim in enumerate("rfm")}
    out["all"] = sum(a == b for a, b in zip(sketched, exact, strict=True)) / n
    out["segment"] = sum(segment_name(*a[:2]) == segment_name(*b[:2])
                         for a, b in zip(sketched, exact, strict=True)) / n
    out["buyers"] = len(buyers)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--customers", type=int, default=3000)
    ap.add_argument("--days", type=float, default=60.0)
    ap.add_argument("--cdnow", action="store_true", help="the CDNOW log instead")
    args = ap.parse_args()
    if args.cdnow:
        from scripts.cdnow import load_cdnow

        events, what = load_cdnow(), "CDNOW log"
    else:
        sim = ShopSimulator(args.customers, seed=5, days=args.days)
        events = sorted(sim.history(), key=lambda e: e["timestamp"])
        what = f"simulator, {args.customers} customers, {args.days:g} days"
    result = agreement(states_of(events))
    print(f"{what}: {result['buyers']:.0f} buyers; agreement with exact quintiles: "
          + ", ".join(f"{k} {v:.2%}" for k, v in result.items() if k != "buyers"))


if __name__ == "__main__":
    main()
