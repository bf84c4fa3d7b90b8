"""Identity stitching on the real broker and Redis (README "Identity stitching"): an anonymous
visitor's events, then an ``identify`` with both ids. The visitor's profile is merged into
the customer's once (counters combined, not doubled, also when the identify is re-sent), one
change message with reason ``merge`` says so, a lookup by either id reads the customer's
segment and traits in one ``HGETALL``, and later events sent with only the anonymous id
count for the customer."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from models.core import Record, Segmenter
from models.events import parse_event
from models.features import DAY_MS, update
from models.identity import merge_id
from models.simulator import ShopSimulator
from models.state import CustomerState
from models.stitching import decode_record
from models.traits import TRAIT_NAMES, from_fields
from stream.embedded import free_port
from stream.kafka_io import ensure_topics, read_lag_once
from stream.keys import Keys
from stream.rfm_io import read_customer
from stream.settings import Settings
from tests.integration.helpers import WorkerProcess, produce, wait_for
from tests.integration.test_serving import request

START = 1_767_225_600_000
ANON, CUST = "ck-7f3a", "cust-stitched"


def _ev(event_id: str, etype: str, ts: int, amount: float = 0.0, **ids: str) -> dict[str, Any]:
    ev: dict[str, Any] = {"event_id": event_id, "type": etype, "timestamp": ts, **ids}
    if amount:
        ev["properties"] = {"amount": amount}
    return ev


def journey() -> tuple[list[dict[str, Any]], dict[str, Any], list[dict[str, Any]]]:
    """A visitor's anonymous events and a customer's own, the identify, and later events
    with only the anonymous id."""
    t = START + 4 * DAY_MS
    before = [_ev("a-1", "page_view", t, anonymous_id=ANON),
              _ev("a-2", "product_view", t + 60_000, anonymous_id=ANON),
              _ev("a-3", "purchase", t + 120_000, 30.0, anonymous_id=ANON),
              _ev("c-1", "purchase", t - DAY_MS, 50.0, customer_id=CUST),
              _ev("c-2", "purchase", t + 30_000, 50.0, customer_id=CUST)]
    identify = _ev("id-1", "identify", t + 180_000, customer_id=CUST, anonymous_id=ANON)
    after = [_ev("a-4", "purchase", t + 240_000, 20.0, anonymous_id=ANON),
             _ev("a-5", "page_view", t + 300_000, anonymous_id=ANON)]
    return before, identify, after


def message(ev: dict[str, Any]) -> tuple[bytes, bytes]:
    return (ev.get("customer_id") or ev["anonymous_id"]).encode(), orjson.dumps(ev)


def reference(settings: Settings, events: list[dict[str, Any]]) -> CustomerState:
    """The customer as if every event had been sent with its customer id."""
    st = CustomerState(CUST)
    for ev in sorted(events, key=lambda e: e["timestamp"]):
        mine = {**ev, "customer_id": CUST}
        update(st, parse_event(orjson.dumps(mine), CUST.encode()),
               settings.half_life_days * DAY_MS, int(settings.allowed_lateness_s * 1000))
    return st


async def stored(r: aioredis.Redis, keys: Keys, cid: str) -> tuple[dict[str, str],
                                                                  CustomerState | None]:
    found = await read_customer(r, keys, cid)
    assert found is not None, f"nothing stored for {cid}"
    return found


async def merge_changes(r: aioredis.Redis, keys: Keys) -> list[dict[str, Any]]:
    entries = await r.xrange(keys.changes)
    docs = [orjson.loads(fields[b"change"]) for _, fields in entries]
    return [d for d in docs if d.get("reason") == "merge"]


async def with_model(settings: Settings, r: aioredis.Redis,
                     **more: Any) -> tuple[Settings, Keys]:
    """Settings without learning (and ``more``) and a model installed in Redis, learned
    in-process from a simulated shop: segments from the first event, and the same ones
    whatever the batching."""
    checkpoint = learned_model(dataclasses.replace(settings, warmup=100))
    settings = dataclasses.replace(settings, model_update_every=10**9, model_update_days=0.0,
                                   rescore_per_s=0, **more)
    keys = Keys(settings.redis_prefix)
    await ensure_topics(settings)
    await r.set(keys.model, orjson.dumps(checkpoint))
    await r.set(keys.model_version, checkpoint["version"])
    return settings, keys


async def test_an_identify_merges_the_anonymous_profile_once(
        settings: Settings, tmp_path: Path, r: aioredis.Redis) -> None:
    if settings.redis_cluster:
        pytest.skip("mirrors of linked anonymous ids are not built on Redis Cluster yet")
    settings, keys = await with_model(settings, r)
    before, identify, after = journey()
    await produce(settings, [message(e) for e in before])
    worker = WorkerProcess(settings, tmp_path)
    try:
        await worker.wait_healthy()

        async def segmented() -> bool:
            hashes = [await r.hgetall(keys.customer(c)) for c in (ANON, CUST)]
            return all(b"segment" in h for h in hashes)
        await wait_for(segmented, 90, "both profiles to have a segment")
        anon_doc, _ = await stored(r, keys, ANON)

        await produce(settings, [message(identify)])

        async def orders(n: int) -> bool:
            found = await read_customer(r, keys, CUST)
            return found is not None and found[1] is not None and found[1].orders_total == n

        async def merged() -> bool:
            return await r.hget(keys.customer(ANON), "customer_id") == CUST.encode() and (
                await orders(3))
        await wait_for(merged, 60, "the merge, and the anonymous id's mirror")
        doc, st = await stored(r, keys, CUST)
        assert st is not None
        ref = reference(settings, [*before, identify])
        assert (st.orders_total, st.spend_total) == (3, 130.0)
        assert (st.orders_total, st.spend_total, st.events_total) == (
            ref.orders_total, ref.spend_total, ref.events_total)
        assert st.counters == pytest.approx(ref.counters)
        # one change message for the anonymous id, from its own segment to the customer's
        merges = await merge_changes(r, keys)
        assert len(merges) == 1, merges
        assert merges[0]["customer_id"] == ANON and merges[0]["merged_into"] == CUST
        assert merges[0]["from"] == anon_doc["segment"]
        # a lookup by either id: the customer's segment and traits, one HGETALL
        mirror = {k.decode(): v.decode() for k, v in
                  (await r.hgetall(keys.customer(ANON))).items()}
        assert mirror.pop("customer_id") == CUST
        shown = ("segment", "segment_name", "model_version", *TRAIT_NAMES)
        assert {k: mirror.get(k) for k in shown} == {k: doc.get(k) for k in shown}
        status, body = worker.get(f"/customers/{ANON}/segment")
        assert status == 200 and body["segment"] == doc["segment"]
        assert await r.hexists(keys.ids(CUST), ANON)

        # later events with only the anonymous id count for the customer; the identify
        # re-sent changes nothing (its link, the merge again: duplicates)
        await produce(settings, [message(identify)] + [message(e) for e in after])

        await wait_for(lambda: orders(4), 60, "the anonymous id's later purchase to count")

        async def mirror_current() -> bool:
            c, a = await r.hget(keys.customer(CUST), "orders"), await r.hget(
                keys.customer(ANON), "orders")
            return c is not None and c == a
        await wait_for(mirror_current, 30, "the mirror to follow the customer's write")
        doc, st = await stored(r, keys, CUST)
        assert st is not None
        ref = reference(settings, [*before, identify, *after])
        assert (st.orders_total, st.spend_total, st.events_total) == (
            ref.orders_total, ref.spend_total, ref.events_total)
        assert (st.orders_total, st.spend_total) == (4, 150.0)
        assert st.counters == pytest.approx(ref.counters)
        assert len(await merge_changes(r, keys)) == 1
        assert st.admit(merge_id(ANON, "id-1"), identify["timestamp"],
                        int(settings.allowed_lateness_s * 1000)) == "duplicate"
        # the anonymous id holds a link record, not a profile of its own
        raw = await r.get(keys.state(ANON))
        assert raw is not None and b"\x01LNK" in raw[:40]
    finally:
        assert worker.stop() == 0, worker.log()


# -- kill -9 during merges, compared with an uninterrupted run ----------------------------------

PAIRS = 150


def visitors() -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]],
                        list[tuple[bytes, bytes]]]:
    """Anonymous visitors and customers' own events; the identifies linking each pair (on
    the customers' partitions, the visitors' on others as keys fall); later anonymous-only
    events."""
    t = START + 4 * DAY_MS
    before, links, after = [], [], []
    for i in range(PAIRS):
        anon, cust = f"ck-{i}", f"cust-{i}"
        before += [_ev(f"a{i}-1", "page_view", t + i, anonymous_id=anon),
                   _ev(f"a{i}-2", "purchase", t + 60_000 + i, 10.0 + i % 7, anonymous_id=anon),
                   _ev(f"c{i}-1", "purchase", t - DAY_MS + i, 40.0 + i % 5, customer_id=cust)]
        links.append(_ev(f"id{i}", "identify", t + 120_000 + i, customer_id=cust,
                         anonymous_id=anon))
        after.append(_ev(f"a{i}-3", "purchase", t + 180_000 + i, 5.0, anonymous_id=anon))
    return ([message(e) for e in before], [message(e) for e in links],
            [message(e) for e in after])


def learned_model(settings: Settings) -> dict[str, Any]:
    """A model learned in-process from a simulated shop (every run starts from it)."""
    sim = ShopSimulator(customers=300, seed=8, start_ms=START, days=5)
    seg = Segmenter(dataclasses.replace(settings.segmenter_config(), trains=True))
    seg.apply(seg.parse([Record("events", 0, i, e["customer_id"].encode(), orjson.dumps(e))
                         for i, e in enumerate(sim.history())]), {})
    assert seg.model.ready
    return seg.model.checkpoint()


async def quiet(settings: Settings) -> bool:
    """Everything in the events topic committed (what a worker produces is acknowledged
    before the commit of what made it: nothing more will come)."""
    rows = await read_lag_once(settings.kafka, settings.group, settings.events_topic)
    return bool(rows) and all(p.lag == 0 and p.committed is not None for p in rows
                              if p.end > 0)


async def outcome(r: aioredis.Redis, settings: Settings) -> dict[str, Any]:
    """What must not depend on crashes: customers' features and hashes, the anonymous ids'
    link records and mirrors, sizes, merge change messages (write times and the offsets of
    produced messages apart: those interleave as they were produced)."""
    keys = Keys(settings.redis_prefix)
    out: dict[str, Any] = {}
    for i in range(PAIRS):
        doc, st = await stored(r, keys, f"cust-{i}")
        assert st is not None
        st.partition = st.offset = 0
        mirror = {k.decode(): v.decode() for k, v in
                  (await r.hgetall(keys.customer(f"ck-{i}"))).items()}
        record = decode_record((await r.get(keys.state(f"ck-{i}")) or b"::").split(b":", 2)[2])
        for h in (doc, mirror):
            h.pop("updated_at", None)
            h.pop("explanation", None)
        out[f"cust-{i}"] = (st.to_bytes(), doc, mirror, record)
    merges: dict[str, int] = {}
    for _, fields in await r.xrange(keys.changes):
        c = orjson.loads(fields[b"change"])
        if c["reason"] == "merge":
            merges[c["customer_id"]] = merges.get(c["customer_id"], 0) + 1
    out["merges"] = merges
    out["sizes"] = {k.decode(): int(v) for k, v in (await r.hgetall(keys.sizes)).items()
                    if int(v)}
    return out


async def merge_messages(r: aioredis.Redis, settings: Settings) -> int:
    entries = await r.xrange(Keys(settings.redis_prefix).changes)
    return sum(1 for _, f in entries if b'"merge"' in f[b"change"])


async def stitched_run(settings: Settings, tmp_path: Path, r: aioredis.Redis,
                       checkpoint: dict[str, Any], mode: str) -> dict[str, Any]:
    """The visitors' events, then the identifies, then the later anonymous events. ``mode``
    ``ref``: one worker, uninterrupted; ``kill``: the worker killed -9 while the identifies
    are merged, then restarted; ``pair``: two workers (a visitor and its customer often on
    different ones), one killed -9 while they are merged, the survivor takes over."""
    await ensure_topics(settings)
    await r.set(Keys(settings.redis_prefix).model, orjson.dumps(checkpoint))
    await r.set(Keys(settings.redis_prefix).model_version, checkpoint["version"])
    before, links, after = visitors()
    await produce(settings, before)
    workers = [WorkerProcess(settings, tmp_path, mode)]
    if mode == "pair":
        workers.append(WorkerProcess(dataclasses.replace(settings, web_port=free_port()),
                                     tmp_path, "pair-b"))

        async def shared() -> bool:
            return all("segmenter_assigned_partitions 2.0" in w.metrics_text()
                       for w in workers)
        for w in workers:
            await w.wait_healthy()
        await wait_for(shared, 60, "both workers to own two partitions")
    try:
        await wait_for(lambda: quiet(settings), 90, "the visitors' events")
        step = PAIRS // 10
        for n, start in enumerate(range(0, PAIRS, step)):
            await produce(settings, links[start:start + step])
            if mode != "ref" and n == 3:
                await wait_for(lambda: _at_least(r, settings, step), 30, "merges under way")
                victim = workers.pop(0)
                victim.proc.send_signal(signal.SIGKILL)
                assert victim.proc.wait(10) == -signal.SIGKILL
                print(f"{mode}: killed with {await merge_messages(r, settings)} of "
                      f"{start + step} identifies merged")
                if mode == "kill":
                    workers.append(WorkerProcess(settings, tmp_path, "restarted"))
            await asyncio.sleep(0.2)
        await wait_for(lambda: quiet(settings), 120, "the merges")
        await produce(settings, after)
        await wait_for(lambda: quiet(settings), 90, "the later anonymous events")
        for w in workers:
            print(mode, [line for line in w.metrics_text().splitlines() if
                         line.startswith("segmenter_events_total") and (
                             "merge" in line or "link" in line or "forwarded" in line)])
    finally:
        for w in workers:
            assert w.stop() == 0, w.log()
    return await outcome(r, settings)


async def _at_least(r: aioredis.Redis, settings: Settings, n: int) -> bool:
    return await merge_messages(r, settings) >= n


async def test_kill_9_during_merges_alone_or_one_of_two_equals_an_uninterrupted_run(
        settings: Settings, tmp_path: Path, r: aioredis.Redis) -> None:
    if settings.redis_cluster:
        pytest.skip("mirrors of linked anonymous ids are not built on Redis Cluster yet")
    base = dataclasses.replace(settings, warmup=100, model_update_every=10**9,
                               model_update_days=0.0,
                               rescore_per_s=0)
    checkpoint = learned_model(dataclasses.replace(settings, warmup=100))
    runs = []
    for name in ("ref", "kill", "pair"):
        run = dataclasses.replace(
            base, events_topic=f"{base.events_topic}-{name}", group=f"{base.group}-{name}",
            dlq_topic=f"{base.dlq_topic}-{name}", redis_prefix=f"{base.redis_prefix}{name}:",
            changes_topic=f"{base.changes_topic}-{name}", web_port=free_port())
        runs.append(await stitched_run(run, tmp_path, r, checkpoint, name))
    want = runs[0]
    assert want["merges"] == {f"ck-{i}": 1 for i in range(PAIRS)}
    for got in runs[1:]:
        assert got["merges"] == want["merges"]
        assert got["sizes"] == want["sizes"]
        differ = [c for c in want if c.startswith("cust-") and got[c] != want[c]]
        assert not differ, (f"{len(differ)} differ; {differ[0]}: {got[differ[0]]} != "
                            f"{want[differ[0]]}")
    for i in range(PAIRS):  # every merge counted: the customer's orders, the mirror's
        st = CustomerState.from_bytes(f"cust-{i}", want[f"cust-{i}"][0],
                                      from_fields(want[f"cust-{i}"][1]))
        assert st.orders_total == 3
        assert want[f"cust-{i}"][2]["customer_id"] == f"cust-{i}"


async def test_linked_ids_are_bounded_unlinked_and_erased_with_their_customer(
        settings: Settings, tmp_path: Path, r: aioredis.Redis) -> None:
    if settings.redis_cluster:
        pytest.skip("mirrors of linked anonymous ids are not built on Redis Cluster yet")
    settings = dataclasses.replace(settings, max_anonymous_ids=2)
    keys = Keys(settings.redis_prefix)
    await ensure_topics(settings)
    t, cust = START + 4 * DAY_MS, "cust-b"
    anons = [f"ck-b{i}" for i in range(3)]
    events = [_ev(f"{a}-1", "page_view", t + i, anonymous_id=a) for i, a in enumerate(anons)]
    events.append(_ev("cb-1", "purchase", t, 25.0, customer_id=cust))
    events += [_ev(f"idb{i}", "identify", t + 60_000 * (i + 1), customer_id=cust,
                   anonymous_id=a) for i, a in enumerate(anons)]
    await produce(settings, [message(e) for e in events])
    worker = WorkerProcess(settings, tmp_path)
    try:
        await worker.wait_healthy()

        async def linked() -> bool:  # the oldest link went past the bound: no mirror
            ids = {k.decode() for k in await r.hkeys(keys.ids(cust))}
            mirrors = [await r.hget(keys.customer(a), "customer_id") for a in anons]
            return ids == set(anons[1:]) and mirrors == [None, cust.encode(), cust.encode()]
        await wait_for(linked, 60, "two linked ids with mirrors, the oldest dropped")
        await wait_for(lambda: quiet(settings), 60, "the merges to be committed")
        # the dropped id was unlinked: its later events are a profile of its own
        await produce(settings, [message(_ev("b0-late", "purchase", t + 400_000, 9.0,
                                             anonymous_id=anons[0]))])

        async def own_profile() -> bool:
            found = await read_customer(r, keys, anons[0])
            return found is not None and found[1] is not None and found[1].orders_total == 1
        await wait_for(own_profile, 60, "the dropped id's later event to count for itself")
        assert await r.hget(keys.customer(anons[0]), "customer_id") is None
        found = await read_customer(r, keys, cust)
        assert found is not None and found[1] is not None and found[1].orders_total == 1

        status, _, body = request(worker, "DELETE", f"/customers/{cust}",
                                  headers={"Authorization": f"Bearer {settings.api_token}"})
        assert status == 200 and body["erased"], body
        # at once: the customer, its linked ids' mirrors and link records
        for a in anons[1:]:
            assert not await r.exists(keys.customer(a), keys.state(a))
        assert not await r.exists(keys.customer(cust), keys.state(cust), keys.ids(cust))
        # the linked ids' workers forgot them too: a later event of one starts afresh
        await produce(settings, [message(_ev("b1-late", "page_view", t + 600_000,
                                             anonymous_id=anons[1]))])

        async def afresh() -> bool:
            found = await read_customer(r, keys, anons[1])
            return found is not None and found[1] is not None
        await wait_for(afresh, 60, "the erased anonymous id's new event to count for itself")
        assert await r.hget(keys.customer(anons[1]), "customer_id") is None
        assert not await r.exists(keys.customer(cust), keys.state(cust))
    finally:
        assert worker.stop() == 0, worker.log()
