"""Workers' samples for the trainer (``stream.samples``) against real Redis: one key per
worker that expires with it, read only when it changed."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

import stream.samples
from stream.keys import Keys
from stream.samples import SampleBoard
from stream.settings import Settings
from tests.integration.helpers import wait_for


async def test_samples_expire_with_their_worker_and_are_read_when_new(
        settings: Settings, r: aioredis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = Keys(settings.redis_prefix, cluster=settings.redis_cluster)
    await r.hset(keys.samples, "w-old", b"{}")  # an older version's hash of every sample
    a, b, trainer = (SampleBoard(r, keys, me) for me in ("w-a", "w-b", "w-t"))
    await a.publish(100, 10, [[1.0, 2.0]])
    await b.publish(200, 5, [[3.0, 4.0]])
    ttl = await r.pttl(keys.sample("w-a"))
    assert 0 < ttl <= stream.samples.SAMPLE_STALE_S * 1000
    assert 0 < await r.pttl(keys.sample_index) <= stream.samples.SAMPLE_STALE_S * 1000
    fresh, gone = await trainer.take()
    assert fresh == {"w-a": (100, [[1.0, 2.0]], 0), "w-b": (200, [[3.0, 4.0]], 0)}
    assert gone == set()
    assert await trainer.take() == ({}, set())  # nothing new: no sample read again
    await a.publish(120, 25, [[1.5, 2.5]])
    assert await trainer.take() == ({"w-a": (120, [[1.5, 2.5]], 15)}, set())
    await trainer.forget_legacy()
    assert not await r.exists(keys.samples)

    # a worker that stops publishing: its key expires (a short expiry for the test) and the
    # trainer drops it; the index expires with the last worker
    monkeypatch.setattr(stream.samples, "SAMPLE_STALE_S", 1.0)
    await b.publish(200, 5, [[3.0, 4.0]])

    async def expired() -> bool:
        return not await r.exists(keys.sample("w-b"), keys.sample_index)
    await wait_for(expired, 10, "the samples and their index to expire", every=0.1)
    assert await trainer.take() == ({}, {"w-a", "w-b"})
    left = [k async for k in r.scan_iter(match=keys.sample("*"))]  # (the layout's names)
    assert left == [keys.sample("w-a").encode()]  # published with the minute's expiry
    assert 0 < await r.pttl(left[0]) <= 60_000
