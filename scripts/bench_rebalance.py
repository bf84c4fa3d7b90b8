"""What a rebalance's warm start costs Redis: commands and time per worker, with N customers.

An embedded Valkey is filled with ``--customers`` customer states spread over
``--partitions`` events-topic partitions, as the write script leaves them (the state string
and the partition index; customers have no segment hash yet, as before their first model).
Then one worker's warm start (:class:`stream.warm.Warmer`, with a real core) takes over
``--take`` partitions, twice:

- **index**: the per-partition index (``seg:partition:{n}``, ``SSCAN`` pages);
- **scan**: the fallback of a keyspace without the index (``SCAN`` of every state).

For each it prints the commands Redis ran (``INFO commandstats``), the states read and the
wall time. ``--cache`` bounds the core's cache (``SEGMENTER_STATE_CACHE``); pick it at least
the taken-over customers, or both stop early.

Usage: ``python -m scripts.bench_rebalance [--customers 100000 --partitions 12 --take 4]``.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from prometheus_client import CollectorRegistry, Counter

from models.core import Segmenter
from models.features import CustomerState
from stream.embedded import start_redis
from stream.health import Health
from stream.partition_index import INDEX_FORMAT
from stream.redis_io import RedisStore, connect
from stream.settings import Settings
from stream.warm import Warmer

PREFIX = "bench:"


async def fill(store: RedisStore, customers: int, partitions: int) -> None:
    """States and index entries as the write script leaves them, pipelined in pages."""
    blobs = []
    for p in range(partitions):  # the state blob names its partition too
        st = CustomerState("x")
        st.partition, st.last_ts = p, 1767225600000
        blobs.append(st.to_bytes())
    k, page = store.keys, 5000
    for start in range(0, customers, page):
        async with store.r.pipeline(transaction=False) as pipe:
            for i in range(start, min(customers, start + page)):
                cid, p = f"c{i}", i % partitions
                pipe.set(k.state(cid), b"%d:%d:%s" % (p, i, blobs[p]))
                pipe.sadd(k.partition(p), cid)
            await pipe.execute()
    await store.r.set(k.partition_indexed, INDEX_FORMAT)


async def calls(store: RedisStore) -> dict[str, int]:
    stats = await store.r.info("commandstats")
    return {name.removeprefix("cmdstat_"): v["calls"] for name, v in stats.items()}


async def warm(store: RedisStore, settings: Settings, take: set[int]) -> tuple[
        int, float, dict[str, int]]:
    """One warm start of ``take`` on a fresh core: states cached, seconds, commands."""
    core = Segmenter(settings.segmenter_config())
    warmer = Warmer(store, core, asyncio.Lock(), lambda: take, settings.state_cache,
                    Health(), Counter("errors", "", registry=CollectorRegistry()))
    await store.r.config_resetstat()
    started = time.perf_counter()
    warmer.start(take)
    assert warmer._task is not None
    await warmer._task
    seconds = time.perf_counter() - started
    used = await calls(store)
    used.pop("config|resetstat", None)
    used.pop("config", None)
    return len(core.cache), seconds, used


async def main(customers: int, partitions: int, take: int, cache: int) -> None:
    server = start_redis()
    client = connect(server.url)
    try:
        store = RedisStore(client, PREFIX, 1000)
        settings = Settings(state_cache=cache)
        started = time.perf_counter()
        await fill(store, customers, partitions)
        memory = (await client.info("memory"))["used_memory"]
        print(f"{customers} customers over {partitions} partitions in "
              f"{time.perf_counter() - started:.1f} s ({memory / 2**20:.0f} MiB); one worker "
              f"takes over {take} partitions "
              f"({sum(1 for i in range(customers) if i % partitions < take)} customers)")
        taken = set(range(take))
        for mode in ("index", "scan"):
            if mode == "scan":
                await client.delete(store.keys.partition_indexed)
            cached, seconds, used = await warm(store, settings, taken)
            total = sum(used.values())
            detail = ", ".join(f"{n} {c}" for n, c in sorted(used.items(), key=lambda x: -x[1]))
            print(f"{mode:>5}: {cached} states cached in {seconds:.2f} s; {total} commands "
                  f"({detail})")
    finally:
        await client.aclose()
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--take", type=int, default=4)
    parser.add_argument("--cache", type=int, default=1_000_000)
    a = parser.parse_args()
    asyncio.run(main(a.customers, a.partitions, a.take, a.cache))
