"""Drift -> refresh through a real worker, the real broker and Redis: a worker learns a
population; then customers unlike any of it arrive; the drift monitor (ADWIN over the
distance of assigned customers to their centre, ``models.drift``) fires, and the next model
update re-clusters (a refresh) so that a segment describes the newcomers.

How the settings make this deterministic rather than a matter of timing:

- ADWIN gets one value per 256 assignments and looks for a change only every 32 values, and
  a customer is assigned once per flush point (a model update or a batch's end) whatever
  their events in between. So the events of many customers are interleaved, one event per
  customer in turn, as at a busy hour; one partition keeps that order, and small batches
  (``batch_max``) make every event an assignment of its own. The stable phase gives ADWIN
  ~50 values of one level, the shift a level three times higher.
- Scheduled refreshes are off (``refresh_every``): only the seeding and a refresh forced by
  drift change the model's criterion, the Davies-Bouldin scan that only a re-clustering
  computes. Model updates come every ``UPDATE`` events, and the stable phase ends exactly on
  one, so the newcomers' distances are measured against the old segments for ``UPDATE``
  assignments (~62 ADWIN values) before the next update, which ADWIN needs at most 37 of.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from models.events import parse_timestamp
from models.simulator import PERSONAS, ShopSimulator
from stream.kafka_io import ensure_topics
from stream.settings import Settings
from tests.integration.helpers import WorkerProcess, produce, wait_for
from tests.integration.test_model_lifecycle import START, hashes, published_model
from tests.integration.test_pipeline import lag_is_zero

UPDATE = 16_000
"""Valid events between model updates."""
STABLE = 12_000
"""Fewest interleaved events of the first population (~40 ADWIN values at ~80% distinct)."""
NEWCOMERS, ROUNDS = 2000, 10
BY_NAME = {p.name: p for p in PERSONAS}


def drift_settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, partitions=1, batch_max=500, min_segments=2,
                               max_segments=8, model_update_every=UPDATE,
                               refresh_every=1_000_000)


def population() -> tuple[ShopSimulator, list[dict[str, Any]]]:
    """The first population: ten days of three personas' history, then each customer
    browsing in turn (page views a minute apart) until the stream holds a whole number of
    model update intervals."""
    sim = ShopSimulator(400, seed=1, start_ms=START, days=10, prefix="a", personas=tuple(
        BY_NAME[n] for n in ("loyal_big_spender", "window_shopper", "bargain_hunter")))
    events = list(sim.history())
    end = max(parse_timestamp(e["timestamp"])[0] for e in events)
    ids = sorted(sim.truth)
    # enough browsing for a stable level in ADWIN (~50 values), ending on a model update
    n = (-len(events)) % UPDATE
    n += UPDATE if n < STABLE else 0
    browsing = [{"event_id": f"p{k}-{cid}", "customer_id": cid, "type": "page_view",
                 "timestamp": end + (k + 1) * 60_000 + i,
                 "properties": {"device": "desktop", "channel": "organic", "country": "DE"}}
                for k in range(-(-n // len(ids))) for i, cid in enumerate(ids)]
    return sim, events + browsing[:n]


def newcomers(start_ms: int) -> list[dict[str, Any]]:
    """Customers unlike the first population: seventy-year-olds with high incomes, buying
    ~2,500 EUR baskets on mobile from paid campaigns; each in turn, first identifying, then
    one purchase per round."""
    out = []
    for n in range(ROUNDS):
        for i in range(NEWCOMERS):
            cid = f"w{i:05d}"
            e: dict[str, Any] = {
                "event_id": f"w{n}-{cid}", "customer_id": cid, "timestamp": start_ms +
                n * 600_000 + i, "properties": {"device": "mobile", "channel": "paid",
                                                "country": "DE", "category": "electronics"}}
            if n == 0:
                e["type"] = "identify"
                e["traits"] = {"age": 70 + i % 5, "income": 250_000 + 1000 * (i % 10),
                               "household_size": 6}
            else:
                e["type"] = "purchase"
                e["properties"] |= {"amount": 2000 + (i * 37 + n) % 1000, "currency": "EUR"}
            out.append(e)
    return out


def metric(worker: WorkerProcess, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", worker.metrics_text(), re.M)
    assert m, f"{name} is not exported"
    return float(m.group(1))


def encode(events: list[dict[str, Any]]) -> list[tuple[bytes | None, bytes | None]]:
    return [(e["customer_id"].encode(), orjson.dumps(e)) for e in events]


async def test_drift_forces_a_refresh_that_gives_newcomers_a_segment(
        settings: Settings, tmp_path: Path, r: aioredis.Redis) -> None:
    cfg = drift_settings(settings)
    prefix = cfg.redis_prefix
    await ensure_topics(cfg)
    sim, first = population()
    assert len(first) % UPDATE == 0
    await produce(cfg, encode(first))
    worker = WorkerProcess(cfg, tmp_path)
    try:
        await worker.wait_healthy()
        await wait_for(lambda: lag_is_zero(cfg), 120, "the first population")
        assert metric(worker, "segmenter_drift_detected_total") == 0.0
        model, before = await published_model(r, prefix)
        assert model["version"] >= 1
        crit = model["criterion"]
        assert crit["name"] == "davies_bouldin"
        assert all(p["centre"]["age"] < 60 for p in before.values())

        end = max(parse_timestamp(e["timestamp"])[0] for e in first)
        await produce(cfg, encode(newcomers(end + 3_600_000)))

        async def drifted() -> bool:
            return metric(worker, "segmenter_drift_detected_total") >= 1
        await wait_for(drifted, 120, "the drift detection",
                       detail=lambda: worker.log()[-2000:])

        async def refreshed() -> bool:
            return (await published_model(r, prefix))[0]["criterion"] != crit
        await wait_for(refreshed, 60, "a refresh (a new criterion) after the drift")
        await wait_for(lambda: lag_is_zero(cfg), 120, "the newcomers")
        after, profiles = await published_model(r, prefix)
        assert after["version"] > model["version"]
        # The refresh re-clustered with the newcomers: one segment is theirs now, its centre
        # where they are, and none was before.
        docs = await hashes(r, prefix, [f"w{i:05d}" for i in range(NEWCOMERS)])
        homes = [d["segment"] for d in docs.values()]
        home = max(set(homes), key=homes.count)
        assert homes.count(home) >= 0.9 * len(homes)
        assert home in after["ids"] and profiles[home]["status"] == "active"
        centre = profiles[home]["centre"]
        assert centre["age"] >= 60 and centre["avg_order_value"] >= 1000, centre
        assert profiles[home]["criterion"] == after["criterion"]

        async def apart() -> bool:  # re-scored under the refreshed model in the background
            old = await hashes(r, prefix, sorted(sim.truth))
            return sum(d["segment"] != home for d in old.values()) >= 0.9 * len(old)
        await wait_for(apart, 30, "the first population to be re-scored out of the "
                       "newcomers' segment")
        lifecycle = [json.loads(f[b"lifecycle"]) for _, f in
                     await r.xrange(f"{prefix}lifecycle")]
        print(f"drift: model v{model['version']} -> v{after['version']}, segments "
              f"{model['ids']} -> {after['ids']}, lifecycle after the shift: "
              f"{[e for e in lifecycle if e['model_version'] > model['version']]}")
    finally:
        assert worker.stop() == 0, worker.log()
