"""CPU of a worker's main-thread stages without Kafka: the fold, the batch writes, the
interval flush (drain + writes), the RFM tick and the state loads, over simulated events on an
embedded Valkey, with the Redis server's CPU and its busiest commands.

Usage: ``PYTHONHASHSEED=0 python -m scripts.bench_writes [--events 200000] [--customers 5000]
[--batch 20000] [--flush-every 3] [--profile out.prof] [--dump keys.pkl]`` (``--dump``: every
key's final value, to compare two trees byte for byte; run each with its ``PYTHONPATH``).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import itertools
import pickle
import resource
import sys
from typing import Any

import orjson

from models.core import Record, Segmenter
from models.simulator import ShopSimulator
from stream.embedded import start_redis
from stream.redis_io import RedisStore, connect
from stream.rfm_io import RfmRefresher
from stream.settings import Settings

NOW_MS = 1_700_000_000_000  # a fixed write time: dumps of two runs compare equal


def cpu() -> float:
    """CPU seconds (user + system) of this process."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def dump(client: Any, path: str) -> None:
    """Every key's value (stream entries without their ids) pickled to ``path``."""
    out: dict[bytes, Any] = {}
    async for key in client.scan_iter(count=1000):
        kind = (await client.type(key)).decode()
        if kind == "string":
            out[key] = await client.get(key)
        elif kind == "hash":
            items = list((await client.hgetall(key)).items())  # a listpack's field order too
            # (a hash table's order is its server's, seeded at random)
            listpack = await client.object("encoding", key) in (b"listpack", "listpack")
            out[key] = items if listpack else sorted(items)
        elif kind == "set":
            out[key] = sorted(await client.smembers(key))
        elif kind == "stream":
            out[key] = [fields for _, fields in await client.xrange(key)]
    with open(path, "wb") as f:
        pickle.dump(out, f)


async def run(a: argparse.Namespace) -> None:
    srv = start_redis()
    try:
        client = connect(srv.url)
        store = RedisStore(client, "seg", 10000)
        seg = Segmenter(dataclasses.replace(Settings().segmenter_config(), trains=True))
        rfm = RfmRefresher(store.r, store.keys)
        events = list(itertools.islice(ShopSimulator(a.customers, seed=1, days=30).history(),
                                       a.events))
        recs = [Record("events", hash(e["customer_id"]) % 4, i, e["customer_id"].encode(),
                       orjson.dumps(e)) for i, e in enumerate(events)]
        took = dict.fromkeys(("load", "fold", "upsert", "drain", "flush", "rfm"), 0.0)
        prof = cProfile.Profile() if a.profile else None
        before = await client.info("cpu")
        for n, i in enumerate(range(0, len(recs), a.batch)):
            parsed = seg.parse(recs[i:i + a.batch])  # (a helper process in the worker)
            if prof:
                prof.enable()
            c0 = cpu()
            loaded = await store.load_states(seg.missing(parsed))
            c1 = cpu()
            res = seg.apply(parsed, loaded)  # learning included: in a helper in the worker
            c2 = cpu()
            await store.write(res.assignments, NOW_MS)
            c3 = cpu()
            took["load"] += c1 - c0
            took["fold"] += c2 - c1
            took["upsert"] += c3 - c2
            if n % a.flush_every == a.flush_every - 1:
                drained = seg.drain()
                c4 = cpu()
                await store.write(drained, NOW_MS, refresh=True)
                c5 = cpu()
                await rfm.tick(seg)
                took["drain"] += c4 - c3
                took["flush"] += c5 - c4
                took["rfm"] += cpu() - c5
            if prof:
                prof.disable()
        await store.write(seg.drain(), NOW_MS, refresh=True)
        after = await client.info("cpu")
        total = len(recs)
        print(f"{total:,} events, µs of CPU per event:")
        for stage, s in took.items():
            print(f"  {stage:8s} {s / total * 1e6:7.2f}")
        redis_s = sum(float(after[k]) - float(before[k]) for k in ("used_cpu_user", "used_cpu_sys"))
        print(f"  redis    {redis_s / total * 1e6:7.2f} (server)")
        stats = await client.info("commandstats")
        for name, v in sorted(stats.items(), key=lambda kv: -kv[1]["usec"])[:5]:
            print(f"    {name:24s} calls {v['calls']:8d}  µs a call {v['usec_per_call']:7.2f}")
        if prof:
            prof.dump_stats(a.profile)
        if a.dump:
            await dump(client, a.dump)
        await client.aclose()
    finally:
        srv.stop()


def main(argv: list[str] | None = None) -> int:
    """Print the stages' CPU per event (and optionally profile or dump the keys)."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--customers", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=20_000)
    ap.add_argument("--flush-every", type=int, default=3)
    ap.add_argument("--profile")
    ap.add_argument("--dump")
    asyncio.run(run(ap.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
