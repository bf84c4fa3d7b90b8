"""Redis memory per customer, at 100k and 1M customers (issue #6: target ≤ 1 KiB).

Customer states come from the simulator run through the pure core, so they are what a
worker stores (full dedup windows, category mixes, traits, segment, name and explanation).
They are cloned under new customer ids up to the target count and written with the worker's
own write path (``RedisStore.write``: the same Lua script, keys and fields), on a fresh
Redis. Reported: ``used_memory`` growth per customer, and ``MEMORY USAGE`` of each key.
The change streams (segments, audiences) are trimmed to their ``MAXLEN`` and the same for any
count, so they are left out: each run deletes them before measuring.

A heavy customer (1,000 events in one day of event time: the most the seen-id memory of
``models.state`` holds is bounded by ``SEGMENTER_DEDUP_MAX_IDS``) is measured alone.

Usage: ``python -m scripts.memory [--customers 100000,1000000] [--sample 3000]
[--audiences scripts/audiences_20.json] [--listpack-value 128]``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path

import orjson
from redis.asyncio import Redis

from models.audiences import parse_audience
from models.config import SegmenterConfig
from models.core import Record, Segmenter
from models.records import Assignment
from models.simulator import ShopSimulator
from stream.embedded import start_redis
from stream.redis_io import RedisStore, connect


def realistic_assignments(sample: int, audiences: str = "") -> list[Assignment]:
    """Simulated shoppers (30 days) through the core: the writes a worker would make (with
    the audiences of that file defined: memberships and the windows they keep)."""
    sim = ShopSimulator(sample, seed=4, days=30)
    seg = Segmenter(SegmenterConfig(warmup=500, update_every=5000))
    if audiences:
        doc = orjson.loads(Path(audiences).read_bytes())
        seg.assigner.set_audiences(1, [parse_audience(k, v) for k, v in doc.items()])
    recs = [Record("events", hash(e["customer_id"]) % 4, i, e["customer_id"].encode(),
                   orjson.dumps(e)) for i, e in enumerate(sim.history())]
    final: dict[str, Assignment] = {}

    def keep(writes: list[Assignment]) -> None:
        # the latest write per customer, with the latest "why" (drain writes carry none)
        for a in writes:
            prior = final.get(a.customer_id)
            final[a.customer_id] = a if a.explanation or prior is None else \
                a._replace(explanation=prior.explanation)

    for i in range(0, len(recs), 20_000):
        keep(seg.apply(seg.parse(recs[i:i + 20_000]), {}).assignments)
        keep(seg.drain())
    keep(seg.rescore(10**9))
    return [a for a in final.values() if a.segment]


def heavy_assignment(events: int = 1000) -> Assignment:
    """One customer with ``events`` events within one day, through the core."""
    seg = Segmenter(SegmenterConfig(warmup=500, update_every=10**9, update_every_days=0.0))
    start, kinds = 1_767_225_600_000, ("page_view", "product_view", "search", "add_to_cart")
    recs = [Record("events", 0, i, b"heavy", orjson.dumps({
        "event_id": f"h-{i}", "customer_id": "heavy", "type": kinds[i % 4],
        "timestamp": start + i * 86_400_000 // events,
        "properties": {"category": f"cat{i % 12}", "device": "mobile", "channel": "paid"}}))
        for i in range(events)]
    seg.apply(seg.parse(recs), {})
    (a,) = seg.drain()
    return a._replace(segment="s0", segment_name="Heavy browsers, deal searchers",
                      explanation="heavy browsers, deal searchers, cart fillers")


async def measure_one(url: str, a: Assignment) -> dict[str, int]:
    r = connect(url)
    store = RedisStore(r, "seg:", 100_000)
    await r.flushall()
    await store.write([a], 1_767_225_600_000)
    out = {"state_key": await r.memory_usage(store.keys.state(a.customer_id)) or 0,
           "customer_key": await r.memory_usage(store.keys.customer(a.customer_id)) or 0,
           "blob": len(a.state)}
    await r.aclose()
    return out


async def used_memory(r: Redis) -> int:
    """``used_memory`` once what was deleted is freed: Valkey frees deleted keys and flushed
    databases in the background (``lazyfree-lazy-user-del``, ``-user-flush``)."""
    while int((await r.info("memory")).get("lazyfree_pending_objects", 0)):
        await asyncio.sleep(0.05)
    return int((await r.info("memory"))["used_memory"])


async def measure(url: str, base: list[Assignment], n: int) -> dict[str, float]:
    r = connect(url)
    store = RedisStore(r, "seg:", 100_000)
    await r.flushall()
    before = await used_memory(r)
    for start in range(0, n, 5000):
        batch = [base[(start + j) % len(base)]._replace(customer_id=f"c{start + j:07d}")
                 for j in range(min(5000, n - start))]
        await store.write(batch, 1_767_225_600_000)
    await r.delete(store.keys.changes, store.keys.audience_changes)
    after = await used_memory(r)
    keys = [f"c{i:07d}" for i in range(0, n, max(1, n // 500))]
    state = [await r.memory_usage(store.keys.state(c)) or 0 for c in keys]
    hash_ = [await r.memory_usage(store.keys.customer(c)) or 0 for c in keys]
    await r.aclose()
    return {"per_customer": (after - before) / n, "state_key": statistics.mean(state),
            "customer_key": statistics.mean(hash_),
            "blob": statistics.mean(len(a.state) for a in base)}


def main(argv: list[str] | None = None) -> int:
    """Write the customers, print bytes per customer."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--customers", default="100000,1000000")
    ap.add_argument("--sample", type=int, default=3000)
    ap.add_argument("--audiences", default="", help="a file of audiences to define "
                    "(as SEGMENTER_AUDIENCES_FILE), e.g. scripts/audiences_20.json")
    ap.add_argument("--listpack-value", type=int, default=0, help="the Redis server's "
                    "hash-max-listpack-value (default: Redis' own, 64)")
    args = ap.parse_args(argv)
    base = realistic_assignments(args.sample, args.audiences)
    members = sum(1 for a in base if a.audiences not in ("", "[]"))
    print(f"{len(base):,} sampled customers, {members:,} in at least one audience", flush=True)
    server = start_redis(args=("--hash-max-listpack-value", str(args.listpack_value))
                         if args.listpack_value else ())
    try:
        h = asyncio.run(measure_one(server.url, heavy_assignment()))
        print(f"a heavy customer (1,000 events in a day): state key {h['state_key']:,.0f} B, "
              f"customer hash {h['customer_key']:,.0f} B (state blob {h['blob']:,.0f} B)",
              flush=True)
        for n in (int(x) for x in args.customers.split(",")):
            m = asyncio.run(measure(server.url, base, n))
            print(f"{n:>9,} customers: {m['per_customer']:,.0f} B per customer "
                  f"(MEMORY USAGE: state key {m['state_key']:,.0f} B, customer hash "
                  f"{m['customer_key']:,.0f} B; state blob {m['blob']:,.0f} B)", flush=True)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
