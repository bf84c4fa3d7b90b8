"""``segmenter subscribe --limit N`` against real Valkey: exactly N changes printed, exactly
those acknowledged; the next run goes on from there."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import redis.asyncio as aioredis

from stream.redis_io import Keys, connect
from stream.settings import Settings
from stream.shards import change_id
from stream.subscribe import subscribe


async def add_changes(r: aioredis.Redis, key: str, n: int, start: int = 0) -> list[str]:
    ids = []
    for i in range(start, start + n):
        change = {"customer_id": f"c{i}", "from": None, "to": "s1", "segment_name": "x",
                  "model_version": 1, "event_id": f"e{i}", "changed_at": i, "reason": "event"}
        ids.append(change_id(key, await r.xadd(key, {"change": json.dumps(change)})))
    return ids  # as subscribers see them (on a cluster "<partition>:<entry id>")


async def change_stream(r: aioredis.Redis, settings: Settings,
                        name: str = "changes") -> str:
    """The stream a worker writes changes to: on one Redis the global one; on a cluster
    (the sharded layout) that of partition 0, registered as a worker registers it."""
    keys = Keys(settings.redis_prefix, cluster=settings.redis_cluster)
    if not keys.cluster:
        return keys.changes if name == "changes" else keys.audience_changes
    await r.sadd(keys.shards, 0)
    return keys.shard(name, 0)


async def run_cli(settings: Settings, *args: str) -> list[dict[str, object]]:
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "stream.cli", "subscribe", *args],
        env={**os.environ, **settings.with_env()}, capture_output=True, text=True,
        timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


async def test_limit_prints_and_acknowledges_exactly_n(settings: Settings) -> None:
    r = connect(settings.redis_url, cluster=settings.redis_cluster)
    key = await change_stream(r, settings)
    try:
        ids = await add_changes(r, key, 250)  # more than one read of 100
        for run in range(3):
            printed = await run_cli(settings, "--group", "svc", "--from-start", "--limit", "5")
            assert [p["id"] for p in printed] == ids[run * 5:run * 5 + 5]
            assert [p["customer_id"] for p in printed] == [f"c{i}" for i in
                                                           range(run * 5, run * 5 + 5)]
            pending = await r.xpending(key, "svc")
            assert pending["pending"] == 0  # nothing delivered beyond what was printed
            group = (await r.xinfo_groups(key))[0]
            assert change_id(key, group["last-delivered-id"]) == ids[run * 5 + 4]

        # a limit above one read's COUNT, across pending and new entries
        got: list[str] = []
        handled = await subscribe(settings.redis_url, settings.redis_prefix, "svc", "me",
                                  True, lambda entry_id, _: got.append(entry_id), limit=130,
                                  cluster=settings.redis_cluster)
        assert handled == 130 and got == ids[15:145]
        assert (await r.xpending(key, "svc"))["pending"] == 0

        # a limit larger than what is there: all of it, then new changes as they come
        more = asyncio.ensure_future(subscribe(
            settings.redis_url, settings.redis_prefix, "svc", "me", True,
            lambda entry_id, _: got.append(entry_id), limit=110, cluster=settings.redis_cluster))
        deadline = asyncio.get_running_loop().time() + 20
        while len(got) < 235:  # it has read the 105 left and now waits for new ones
            assert asyncio.get_running_loop().time() < deadline, len(got)
            await asyncio.sleep(0.05)
        late = await add_changes(r, key, 10, start=250)
        assert await asyncio.wait_for(more, 20) == 110
        assert got[130:] == ids[145:] + late[:5]
        assert (await r.xpending(key, "svc"))["pending"] == 0
    finally:
        await r.aclose()
