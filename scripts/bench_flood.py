"""Valid traffic under a flood of bad and oversized messages (issue #6), side by side.

Two topics hold the same valid events (simulated shoppers). The *flood* topic also holds,
interleaved, ``--bad-ratio`` bad messages per valid one (malformed JSON, wrong types, pre-epoch
timestamps, keys that are not the customer id, in turn) and ``--oversized`` messages over
the 64 KiB limit. One real worker per topic (fresh group and Redis prefix); reported: valid
events/s in each, and their ratio. Every bad message still goes to the DLQ with its bytes.

Usage: ``python -m scripts.bench_flood [--events 100000] [--bad-ratio 1] [--oversized 200]
[--runs 3]``
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import sys
import uuid

import orjson

from models.events import MAX_EVENT_BYTES
from models.simulator import ShopSimulator
from scripts.bench import worker_run
from stream.embedded import embedded_stack, free_port
from stream.kafka_io import ensure_topics, make_producer
from stream.produce import produce
from stream.settings import Settings


def bad_message(i: int, event: dict[str, object]) -> tuple[bytes, bytes]:
    key = str(event["customer_id"]).encode()
    kind = i % 4
    if kind == 0:
        return key, orjson.dumps(event)[:-7]  # truncated JSON
    if kind == 1:
        return key, orjson.dumps({**event, "timestamp": [1, 2]})
    if kind == 2:
        return key, orjson.dumps({**event, "timestamp": -86_400_000})  # 1969: before the epoch
    return b"not-" + key, orjson.dumps(event)


def streams(events: int, bad_ratio: float, oversized: int
            ) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
    sim = ShopSimulator(5000, seed=1, days=30)
    valid = list(itertools.islice(sim.history(), events))
    clean = [(str(e["customer_id"]).encode(), orjson.dumps(e)) for e in valid]
    flood: list[tuple[bytes, bytes]] = []
    big_every = max(1, len(valid) // max(1, oversized)) if oversized else 0
    debt = 0.0
    for i, (msg, e) in enumerate(zip(clean, valid, strict=True)):
        flood.append(msg)
        debt += bad_ratio
        while debt >= 1:
            flood.append(bad_message(len(flood), e))
            debt -= 1
        if big_every and i % big_every == 0:
            pad = {**e, "properties": {"category": "x" * (MAX_EVENT_BYTES + 4096)}}
            flood.append((str(e["customer_id"]).encode(), orjson.dumps(pad)))
    return clean, flood


async def fill(settings: Settings, messages: list[tuple[bytes, bytes]]) -> None:
    await ensure_topics(settings)
    producer = make_producer(settings)
    await producer.start()
    try:
        await produce(producer, settings.events_topic, messages)
    finally:
        await producer.stop()


def main(argv: list[str] | None = None) -> int:
    """Run both scenarios ``--runs`` times, alternating; print valid events/s and the ratio."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--bad-ratio", type=float, default=1.0)
    ap.add_argument("--oversized", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    clean, flood = streams(args.events, args.bad_ratio, args.oversized)
    with embedded_stack() as (k, r):
        env = {"SEGMENTER_KAFKA": os.environ.get("SEGMENTER_KAFKA") or k.url,
               "SEGMENTER_REDIS_URL": os.environ.get("SEGMENTER_REDIS_URL") or r.url,
               "SEGMENTER_PARTITIONS": "4"}
        topics = {}
        for name, msgs in (("clean", clean), ("flood", flood)):
            topic = f"{name}-{uuid.uuid4().hex[:6]}"
            s = Settings.from_env({**env, "SEGMENTER_EVENTS_TOPIC": topic})
            asyncio.run(fill(s, msgs))
            topics[name] = (s, len(msgs))
        rates: dict[str, list[float]] = {"clean": [], "flood": []}
        for i in range(args.runs):
            for name, (base, total) in topics.items():
                uid = uuid.uuid4().hex[:6]
                s = Settings.from_env({**base.with_env(), "SEGMENTER_GROUP": f"flood-{uid}",
                                       "SEGMENTER_REDIS_PREFIX": f"f{uid}:",
                                       "SEGMENTER_DLQ_TOPIC": f"dlq-{uid}",
                                       "SEGMENTER_WEB_PORT": str(free_port())})
                all_per_s = worker_run(s, total)
                rates[name].append(all_per_s * len(clean) / total)  # valid events per second
            print(f"run {i + 1}: clean {rates['clean'][-1]:,.0f} valid ev/s, flood "
                  f"{rates['flood'][-1]:,.0f} valid ev/s", flush=True)
    c, f = statistics.median(rates["clean"]), statistics.median(rates["flood"])
    bad = len(flood) - len(clean)
    print(f"\n{len(clean):,} valid events; flood adds {bad:,} bad messages "
          f"({args.oversized} over {MAX_EVENT_BYTES // 1024} KiB); medians of {args.runs}:")
    print(f"  valid events/s, clean topic : {c:>10,.0f}")
    print(f"  valid events/s, flood topic : {f:>10,.0f}")
    print(f"  slowdown of valid traffic   : {c / f:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
