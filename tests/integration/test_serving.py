"""Serving: lookups, erasure, change subscriptions, Kafka relay (real broker, worker, Redis)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
import zlib
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from models.simulator import ShopSimulator
from stream.kafka_io import ensure_topics
from stream.keys import Keys
from stream.settings import Settings
from stream.shards import change_id, newest, streams, sum_hashes
from tests.integration.helpers import TopicReader, WorkerProcess, produce, wait_for
from tests.integration.test_pipeline import lag_is_zero


def request(worker: WorkerProcess, method: str, path: str, body: Any = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    url = f"http://127.0.0.1:{worker.settings.web_port}{path}"
    data = orjson.dumps(body) if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, dict(resp.headers), orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), orjson.loads(exc.read())


def event(cid: str, n: int, etype: str = "page_view", **props: Any) -> tuple[bytes, bytes]:
    return cid.encode(), orjson.dumps({
        "event_id": f"e{n}-{zlib.crc32(cid.encode())}", "customer_id": cid, "type": etype,
        "timestamp": 1767225600000 + n * 60_000, "properties": props})


async def seeded_worker(settings: Settings, tmp_path: Path,
                        customers: int = 400) -> tuple[WorkerProcess, ShopSimulator]:
    """A worker whose model is seeded on simulated shoppers, caught up."""
    await ensure_topics(settings)
    sim = ShopSimulator(customers=customers, seed=3, days=6)
    await produce(settings, [(e["customer_id"].encode(), orjson.dumps(e))
                             for e in sim.history()])
    worker = WorkerProcess(settings, tmp_path)
    await worker.wait_healthy()
    await wait_for(lambda: lag_is_zero(settings), 90, "the worker to catch up")
    return worker, sim


async def test_lookups_any_id_batch_and_cors(settings: Settings, tmp_path: Path) -> None:
    worker, sim = await seeded_worker(settings, tmp_path)
    try:
        odd = ["ü/ß 客户", 'quote"\'id', "a/b/segment", "{brace}", "x" * 128]
        await produce(settings, [event(c, n, "purchase", amount=10 + n)
                                 for c in odd for n in range(3)])
        await wait_for(lambda: lag_is_zero(settings), 60, "odd ids to be processed")
        auth = {"Authorization": f"Bearer {settings.api_token}"}
        public = {"customer_id", "segment", "segment_name", "model_version", "updated_at",
                  "confidence"}
        for cid in odd:
            path = f"/customers/{urllib.parse.quote(cid, safe='')}/segment"
            status, _, body = request(worker, "GET", path)  # a browser: public fields only
            assert status == 200, (cid, body)
            assert body["customer_id"] == cid and body["segment"].startswith("s")
            assert set(body) == public, body
            status, _, full = request(worker, "GET", path, headers=auth)
            assert status == 200 and full["explanation"] and full["rfm"]  # not public
            assert {k: full[k] for k in public} == body
        some = sorted(sim.truth)[:3]
        status, _, body = request(worker, "POST", "/customers/segments",
                                  {"ids": [*some, odd[0], "nobody"]}, headers=auth)
        assert status == 200 and body["customers"]["nobody"] is None
        assert all(body["customers"][c]["segment"] for c in [*some, odd[0]])
        q = "&".join(f"id={urllib.parse.quote(c)}" for c in some)
        assert request(worker, "GET", f"/customers/segments?{q}", headers=auth)[0] == 200
        assert request(worker, "GET", f"/customers/segments?{q}")[0] == 401
        assert request(worker, "POST", "/customers/segments", {"ids": some})[0] == 401
        assert request(worker, "POST", "/customers/segments", {"ids": []},
                       headers=auth)[0] == 400
        status, _, body = request(worker, "GET", "/customers/nobody/segment")
        assert status == 404 and body["error"] == "unknown customer"
        _, headers, _ = request(worker, "GET", f"/customers/{some[0]}/segment",
                                headers={"Origin": "http://shop.example"})
        assert headers.get("Access-Control-Allow-Origin") == "http://shop.example"
        _, headers, _ = request(worker, "GET", f"/customers/{some[0]}/segment",
                                headers={"Origin": "http://evil.example"})
        assert "Access-Control-Allow-Origin" not in headers
        status, _, body = request(worker, "GET", "/segments")
        assert status == 200 and body and all(p["name"] and "size" in p for p in body.values())
        sid = next(iter(body))
        assert request(worker, "GET", f"/segments/{sid}")[2]["id"] == sid
        assert request(worker, "GET", "/segments/s999")[0] == 404
    finally:
        assert worker.stop() == 0, worker.log()


async def test_erasure(settings: Settings, tmp_path: Path, r: aioredis.Redis) -> None:
    worker, sim = await seeded_worker(settings, tmp_path)
    prefix = settings.redis_prefix
    try:
        cid = sorted(sim.truth)[0]
        seg = (await r.hget(f"{prefix}customer:{{{cid}}}", "segment")).decode()
        keys = Keys(prefix, cluster=settings.redis_cluster)
        size = (await sum_hashes(r, keys, "sizes", keys.sizes))[seg]
        path = f"/customers/{cid}"
        assert request(worker, "DELETE", path)[0] == 401
        assert request(worker, "DELETE", path,
                       headers={"Authorization": "Bearer wrong"})[0] == 401
        status, _, body = request(worker, "DELETE", path,
                                  headers={"Authorization": f"Bearer {settings.api_token}"})
        assert status == 200 and body["found"] is True
        assert not await r.exists(f"{prefix}customer:{{{cid}}}", f"{prefix}state:{{{cid}}}")
        assert (await sum_hashes(r, keys, "sizes", keys.sizes))[seg] == size - 1
        last = await newest(r, await streams(r, keys, "changes", keys.changes), 50)
        deletes = [orjson.loads(f[b"change"]) for _, f in last
                   if orjson.loads(f[b"change"])["customer_id"] == cid]
        assert deletes[0]["reason"] == "delete" and deletes[0]["from"] == seg
        assert deletes[0]["to"] is None
        # the owning worker processes the control message: it stays forgotten through later
        # batches and state flushes (another customer's event, committed after it: a commit
        # follows the flush of every changed state)
        await wait_for(lambda: lag_is_zero(settings), 30, "the erasure to be consumed")
        await produce(settings, [event(sorted(sim.truth)[1], 20_000)])
        await wait_for(lambda: lag_is_zero(settings), 30, "a later event to be committed")
        assert not await r.exists(f"{prefix}state:{{{cid}}}")
        assert request(worker, "GET", f"/customers/{cid}/segment")[0] == 404
        # a later event starts a fresh profile
        await produce(settings, [event(cid, 10_000)])
        await wait_for(lambda: lag_is_zero(settings), 30, "the new event")

        async def fresh() -> bool:
            return bool(await r.exists(f"{prefix}customer:{{{cid}}}"))
        await wait_for(fresh, 10, "a fresh profile")
        from models.features import VIEWS, CustomerState
        raw = await r.get(f"{prefix}state:{{{cid}}}")  # "partition:offset:" + the blob
        state = CustomerState.from_bytes(cid, raw.split(b":", 2)[2])
        assert state.orders_total == 0 and state.counters[VIEWS] == 1.0
    finally:
        assert worker.stop() == 0, worker.log()


def start_subscriber(settings: Settings, out: Path, group: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, **settings.with_env()}
    with open(out, "ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "stream.cli", "subscribe", "--group", group,
             "--from-start"], env=env, stdout=fh, stderr=subprocess.DEVNULL)


def received(path: Path) -> list[dict[str, Any]]:
    """The changes a subscriber printed (one JSON line each, with its stream id)."""
    return [orjson.loads(line) for line in path.read_text().splitlines() if line]


Chain = list[tuple[str | None, str | None, str]]
"""A customer's changes in order: (from, to, change id = stream entry id)."""


def chains_of(changes: Iterable[dict[str, Any]]) -> dict[str, Chain]:
    """Changes (with their ``id``) grouped by customer, in the order given."""
    out: dict[str, Chain] = defaultdict(list)
    for c in changes:
        out[c["customer_id"]].append((c["from"], c["to"], c["id"]))
    return dict(out)


async def stream_chains(r: aioredis.Redis, settings: Settings) -> dict[str, Chain]:
    """Each customer's changes in the order of the Redis change stream."""
    keys = Keys(settings.redis_prefix, cluster=settings.redis_cluster)
    entries = []
    for name in await streams(r, keys, "changes", keys.changes):  # a cluster: per partition
        entries += [(change_id(name, i), f) for i, f in await r.xrange(name)]
    return chains_of({"id": i, **orjson.loads(f[b"change"])} for i, f in entries)


def assert_chain(cid: str, chain: Chain, current: str | None = None) -> None:
    """From the first assignment on, each change starts where the previous one ended."""
    assert chain and chain[0][0] is None, f"{cid}: no first assignment: {chain}"
    for (_, to, _), (frm, nxt, _) in zip(chain, chain[1:], strict=False):
        assert frm == to != nxt, f"{cid}: {to} is followed by a change {frm} -> {nxt}"
    if current is not None:
        assert chain[-1][1] == current, f"{cid}: ends at {chain[-1][1]}, not at {current}"


async def test_subscribers_get_every_change_in_order(settings: Settings, tmp_path: Path,
                                                     r: aioredis.Redis) -> None:
    await ensure_topics(settings)
    live_out, flaky_out = tmp_path / "live.jsonl", tmp_path / "flaky.jsonl"
    live = start_subscriber(settings, live_out, "live")  # connected before the run
    flaky = start_subscriber(settings, flaky_out, "flaky")
    sim = ShopSimulator(customers=600, seed=9, days=10, drift=0.05)
    events = [(e["customer_id"].encode(), orjson.dumps(e)) for e in sim.history()]
    worker = WorkerProcess(settings, tmp_path)
    prefix = settings.redis_prefix
    try:
        await worker.wait_healthy()
        await produce(settings, events[: len(events) // 2])

        async def flaky_got_some() -> bool:
            return bool(received(flaky_out))
        await wait_for(flaky_got_some, 60, "the second subscriber's first changes")
        flaky.send_signal(signal.SIGKILL)  # down mid-run, unacked entries and all
        flaky.wait()
        await produce(settings, events[len(events) // 2:])
        await wait_for(lambda: lag_is_zero(settings), 120, "the worker to catch up")
        flaky = start_subscriber(settings, flaky_out, "flaky")  # back: catches up

        # Background re-scoring may still move customers after the catch-up: wait until the
        # stream, the live subscriber's output and the customer hashes agree.
        seen: dict[str, Any] = {}

        async def live_complete() -> bool:
            stream = await stream_chains(r, settings)
            changes = received(live_out)
            async with r.pipeline(transaction=False) as pipe:
                for cid in stream:
                    pipe.hget(f"{prefix}customer:{{{cid}}}", "segment")
                current = {c: (v.decode() if v else None)
                           for c, v in zip(stream, await pipe.execute(), strict=True)}
            seen.update(stream=stream, changes=changes, current=current)
            return chains_of(changes) == stream and all(
                chain[-1][1] == current[cid] for cid, chain in stream.items())
        await wait_for(live_complete, 60, "the live subscriber to hold every change",
                       detail=lambda: f"{len(seen['changes'])} received, "
                                      f"{sum(map(len, seen['stream'].values()))} in the stream")
        stream, changes, current = seen["stream"], seen["changes"], seen["current"]
        ids = ids_of(stream)
        assert len(changes) == len(ids)  # exactly one message per change
        assert len(stream) == len(sim.truth)
        for cid, chain in stream.items():
            assert_chain(cid, chain, current[cid])

        async def flaky_complete() -> bool:
            return {c["id"] for c in received(flaky_out)} >= ids
        await wait_for(flaky_complete, 30, "the restarted subscriber")

        # The relay copies the stream to the Kafka topic keyed by customer: each customer's
        # changes arrive there in the stream's order (a topic orders within a partition only,
        # so the order per customer is what it keeps), none lost, none repeated.
        async with TopicReader(settings, settings.changes_topic) as topic:
            async def relayed() -> bool:
                kafka = seen["kafka"] = kafka_chains(await topic.read())
                stream = seen["stream"] = await stream_chains(r, settings)
                if kafka == stream:
                    return True
                # all there but not in order: no later message can mend that
                assert not ids_of(stream) <= ids_of(kafka), first_difference(kafka, stream)
                return False
            await wait_for(relayed, 60, "the Kafka topic to hold the stream's changes",
                           detail=lambda: first_difference(seen["kafka"], seen["stream"]))
            messages = topic.messages
        for m in messages:
            assert orjson.loads(m.value)["customer_id"].encode() == m.key
        partitions: dict[bytes, set[int]] = defaultdict(set)
        for m in messages:
            partitions[m.key].add(m.partition)
        assert all(len(p) == 1 for p in partitions.values())
        for cid, chain in seen["kafka"].items():
            assert_chain(cid, chain)
    finally:
        for p in (live, flaky):
            p.terminate()
            p.wait()
        assert worker.stop() == 0, worker.log()


def kafka_chains(messages: list[Any]) -> dict[str, Chain]:
    """Each customer's changes in the order of their partition (offsets)."""
    ordered = sorted(messages, key=lambda m: (m.partition, m.offset))
    return chains_of({"id": dict(m.headers)["segmenter.change_id"].decode(),
                      **orjson.loads(m.value)} for m in ordered)


def ids_of(chains: dict[str, Chain]) -> set[str]:
    return {i for chain in chains.values() for _, _, i in chain}


def first_difference(got: dict[str, Chain], want: dict[str, Chain]) -> str:
    """The first customer whose Kafka chain differs from the stream's, for a failure."""
    for cid in sorted(set(got) | set(want)):
        if got.get(cid) != want.get(cid):
            return f"{cid}: Kafka {got.get(cid)}, stream {want.get(cid)}"
    return "none"
