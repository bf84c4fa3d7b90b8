"""Audiences on the real broker and Redis (contract §2.3, §3, §4): definitions over HTTP and
from a file, memberships in the customer hash (one round trip) and ``GET /customers/<id>``,
one ``entered``/``exited`` message per change on the stream, Pub/Sub and Kafka topic,
re-sends that change nothing, live sizes, erasure."""

from __future__ import annotations

import dataclasses
import urllib.parse
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from stream.embedded import free_port
from stream.kafka_io import ensure_topics
from stream.keys import Keys
from stream.settings import Settings
from stream.shards import streams, sum_hashes
from tests.integration.browser import browser  # noqa: F401  (fixture)
from tests.integration.helpers import WorkerProcess, consume_all, produce, wait_for
from tests.integration.test_pipeline import lag_is_zero
from tests.integration.test_serving import request, seeded_worker

DAY = 86_400_000
T0 = 1767225600000
ADMIN = {"Authorization": "Bearer admin-t"}
REPEAT_AT = {"name": "Repeat buyers in DE or AT", "where": {"all": [
    {"event": "purchase", "within_days": 30, "count": {"op": ">=", "value": 2}},
    {"trait": "country", "op": "in", "value": ["DE", "AT"]}]}}
MOBILE = {"name": "On mobile", "where": {"trait": "device", "op": "=", "value": "mobile"}}

Message = tuple[bytes | None, bytes | None]


def ev(cid: str, n: int, etype: str, day: float = 0, **props: Any) -> Message:
    return cid.encode(), orjson.dumps({
        "event_id": f"{cid}-{n}", "customer_id": cid, "type": etype,
        "timestamp": int(T0 + day * DAY + n * 60_000), "properties": props})


def _text(x: bytes | str) -> str:
    return x.decode() if isinstance(x, bytes) else x


def _keys(r: aioredis.Redis, prefix: str) -> Keys:
    """The layout the worker uses on this Redis (sharded on a cluster)."""
    return Keys(prefix, cluster=isinstance(r, RedisCluster))


async def _stream(r: aioredis.Redis, prefix: str) -> list[dict[str, Any]]:
    """Every audience change, oldest first (on a cluster: every partition's stream, merged
    by entry id; one customer's are all in one stream, in order)."""
    keys = _keys(r, prefix)
    entries = [e for s in await streams(r, keys, "audience-changes", keys.audience_changes)
               for e in await r.xrange(s)]
    entries.sort(key=lambda e: tuple(int(x) for x in _text(e[0]).split("-")))
    return [orjson.loads(f[b"change"]) for _, f in entries]


async def _sizes(r: aioredis.Redis, prefix: str, name: str = "audience-sizes") -> dict[str, int]:
    """A counting hash (``sizes``, ``audience-sizes``), summed over the shards on a cluster."""
    keys = _keys(r, prefix)
    return await sum_hashes(r, keys, name, keys.global_key(name))


async def _worker(settings: Settings, tmp_path: Path, audiences: dict[str, Any]) -> \
        tuple[Settings, WorkerProcess]:
    path = tmp_path / "audiences.json"
    path.write_text(orjson.dumps(audiences).decode())
    settings = dataclasses.replace(settings, api_token="admin-t", read_token="read-t",
                                   audiences_file=str(path))
    await ensure_topics(settings)
    worker = WorkerProcess(settings, tmp_path)
    await worker.wait_healthy()
    return settings, worker


async def test_definitions_over_http_and_from_a_file(
        settings: Settings, tmp_path: Path, r: aioredis.Redis) -> None:
    settings, worker = await _worker(settings, tmp_path, {"a-mobile": MOBILE})
    try:
        status, _, body = request(worker, "GET", "/audiences")
        assert status == 200
        assert [(a["id"], a["definition"], a["size"]) for a in body["audiences"]] == [
            ("a-mobile", MOBILE, 0)]
        path = "/audiences/a-repeat-at"
        assert request(worker, "PUT", path, REPEAT_AT)[0] == 401
        assert request(worker, "PUT", path, REPEAT_AT,
                       headers={"Authorization": "Bearer no"})[0] == 401
        bad = {"name": "x", "where": {"trait": "orders", "op": "~", "value": 1}}
        status, _, body = request(worker, "PUT", path, bad, headers=ADMIN)
        assert status == 400 and "where.op: must be one of" in body["error"], body
        status, _, body = request(worker, "PUT", path, {"name": "x", "where": {"all": [
            {"trait": "shoe_size", "op": "=", "value": 1}]}}, headers=ADMIN)
        assert status == 400 and "where.all[0].trait: unknown trait 'shoe_size'" in \
            body["error"]
        assert request(worker, "GET", path)[0] == 404  # nothing stored by a bad definition
        status, _, body = request(worker, "PUT", path, REPEAT_AT, headers=ADMIN)
        assert status == 201 and body["definition"] == REPEAT_AT and body["size"] == 0
        assert request(worker, "PUT", path, REPEAT_AT, headers=ADMIN)[0] == 200  # replaced
        status, _, body = request(worker, "GET", path)
        assert status == 200 and body["name"] == REPEAT_AT["name"]
        assert {a["id"] for a in request(worker, "GET", "/audiences")[2]["audiences"]} == {
            "a-mobile", "a-repeat-at"}
        assert await r.hexists(_keys(r, settings.redis_prefix).audiences, "a-repeat-at")
        assert request(worker, "DELETE", path)[0] == 401
        assert request(worker, "DELETE", path, headers=ADMIN)[0] == 200
        assert request(worker, "GET", path)[0] == 404
        assert request(worker, "DELETE", path, headers=ADMIN)[0] == 404
    finally:
        worker.stop()
    # an invalid file stops the worker, naming the audience and the problem
    bad_file = tmp_path / "bad.json"
    bad_file.write_text(orjson.dumps({"a-bad": {"name": "n", "where": {"rfm": "Heroes"}}})
                        .decode())
    worker = WorkerProcess(dataclasses.replace(settings, audiences_file=str(bad_file)),
                           tmp_path, name="bad")
    try:
        await wait_for(lambda: _exited(worker), 60, "the worker to refuse the file")
        assert "audience 'a-bad': where.rfm: must be one of" in worker.log()
    finally:
        worker.stop()


async def _exited(worker: WorkerProcess) -> bool:
    return worker.proc.poll() is not None


async def test_memberships_and_their_changes(
        settings: Settings, tmp_path: Path, r: aioredis.Redis,
        browser: Any) -> None:  # noqa: F811
    settings, worker = await _worker(settings, tmp_path,
                                     {"a-repeat-at": REPEAT_AT, "a-mobile": MOBILE})
    prefix, cid = settings.redis_prefix, "ü-aud/1"
    key = f"{prefix}customer:{{{cid}}}"
    path = f"/customers/{urllib.parse.quote(cid, safe='')}"
    await r.ping()  # a cluster client learns the slots' nodes on its first command
    pubsub = r.pubsub()
    await pubsub.subscribe(f"{prefix}audience-changes")
    try:
        first = [ev(cid, 0, "page_view", country="AT", device="mobile"),
                 ev(cid, 1, "purchase", amount=20.0)]
        await produce(settings, first)
        await wait_for(lambda: lag_is_zero(settings), 60, "the first events")
        await wait_for(lambda: _members(r, key, ["a-mobile"]), 30, "a-mobile entered")
        await produce(settings, [ev(cid, 2, "purchase", day=3, amount=30.0, device="desktop")])
        await wait_for(lambda: lag_is_zero(settings), 60, "the second purchase")
        await wait_for(lambda: _members(r, key, ["a-repeat-at"]), 30,
                       "a-repeat-at entered, a-mobile exited")

        # one round trip for a website; the API gives the same list
        h = {_text(k): _text(v) for k, v in (await r.hgetall(key)).items()}
        assert orjson.loads(h["audiences"]) == ["a-repeat-at"] and h["country"] == "AT"
        status, _, body = request(worker, "GET", path, headers={"Authorization":
                                                                "Bearer read-t"})
        assert status == 200 and body["audiences"] == ["a-repeat-at"]

        changes = [(m["audience"], m["change"], m["event_id"], m["reason"])
                   for m in await _stream(r, prefix) if m["customer_id"] == cid]
        assert changes == [("a-mobile", "entered", f"{cid}-1", "event"),
                           ("a-mobile", "exited", f"{cid}-2", "event"),
                           ("a-repeat-at", "entered", f"{cid}-2", "event")]
        sizes = await _sizes(r, prefix)
        assert (sizes["a-repeat-at"], sizes["a-mobile"]) == (1, 0)
        status, _, body = request(worker, "GET", "/audiences/a-repeat-at")
        assert body["size"] == 1
        await wait_for(lambda: _gauge(worker, "a-repeat-at", 1.0), 20, "the size gauge")

        # the dashboard lists every audience with its definition, size and changes per minute
        data = request(worker, "GET", "/api/dashboard")[2]
        listed = {a["id"]: a for a in data["audiences"]}
        assert listed["a-repeat-at"]["definition"] == REPEAT_AT
        assert (listed["a-repeat-at"]["size"], listed["a-mobile"]["size"]) == (1, 0)
        assert listed["a-mobile"]["entered_per_min"] == listed["a-mobile"]["exited_per_min"] > 0
        page = await browser.new_page()
        await page.goto(f"http://127.0.0.1:{settings.web_port}/")
        row = "[data-testid=audiences] tr[data-audience=a-repeat-at]"
        await page.wait_for_selector(row, timeout=20_000)
        assert await page.get_attribute(f"{row} .size", "data-value") == "1"
        assert await page.inner_text(f"{row} .name") == REPEAT_AT["name"]
        assert '"within_days":30' in await page.inner_text(f"{row} .definition")

        # Pub/Sub saw each, the Kafka topic got each (relayed from the stream), once
        seen: list[dict[str, Any]] = []

        async def heard_three() -> bool:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            if msg is not None:
                seen.append(orjson.loads(msg["data"]))
            return len(seen) >= 3
        await wait_for(heard_three, 10, "three Pub/Sub messages", every=0.01)
        assert [(m["audience"], m["change"]) for m in seen] == [c[:2] for c in changes]
        relayed = await consume_all(settings, settings.audience_changes_topic, 3)
        assert [(orjson.loads(m.value)["audience"], orjson.loads(m.value)["change"])
                for m in relayed] == [c[:2] for c in changes]
        assert {m.key for m in relayed} == {cid.encode()}

        # re-sent: nothing moves, nothing is published
        before = await r.hgetall(key)
        await produce(settings, [*first, ev(cid, 2, "purchase", day=3, amount=30.0,
                                            device="desktop")])
        await wait_for(lambda: lag_is_zero(settings), 60, "the re-sent events")
        assert await r.hgetall(key) == before
        assert len(await _stream(r, prefix)) == 3

        # erased: out of the audience, with an exit of reason delete
        assert request(worker, "DELETE", path, headers=ADMIN)[0] == 200
        last = (await _stream(r, prefix))[-1]
        assert (last["audience"], last["change"], last["reason"]) == (
            "a-repeat-at", "exited", "delete")
        assert (await _sizes(r, prefix))["a-repeat-at"] == 0
    finally:
        await pubsub.aclose()
        worker.stop()


async def _members(r: aioredis.Redis, key: str, ids: list[str]) -> bool:
    raw = await r.hget(key, "audiences")
    return raw is not None and orjson.loads(raw) == ids


async def _gauge(worker: WorkerProcess, audience: str, value: float) -> bool:
    return f'segmenter_audience_size{{audience="{audience}"}} {value}' in \
        worker.metrics_text()


async def test_time_based_exits_and_new_audiences_over_existing_customers(
        settings: Settings, tmp_path: Path, r: aioredis.Redis) -> None:
    settings, worker = await _worker(settings, tmp_path, {"a-repeat-at": REPEAT_AT})
    prefix, cid = settings.redis_prefix, "c-time"
    key = f"{prefix}customer:{{{cid}}}"
    try:
        await produce(settings, [ev(cid, 0, "page_view", country="AT"),
                                 ev(cid, 1, "purchase", amount=20.0),
                                 ev(cid, 2, "purchase", day=10, amount=30.0)])
        await wait_for(lambda: lag_is_zero(settings), 60, "the purchases")
        await wait_for(lambda: _members(r, key, ["a-repeat-at"]), 30, "a-repeat-at entered")

        # Another customer's event moves event time on: on day 30 the first purchase has
        # left the 30-day window (days 1-30 hold one purchase): the membership ends without
        # any event of the customer's.
        await produce(settings, [ev("c-other", 0, "page_view", day=30)])
        await wait_for(lambda: _members(r, key, []), 30, "the window to pass")
        last = [m for m in await _stream(r, prefix) if m["customer_id"] == cid][-1]
        assert (last["audience"], last["change"], last["reason"], last["event_id"]) == (
            "a-repeat-at", "exited", "time", None)
        assert (await _sizes(r, prefix))["a-repeat-at"] == 0

        # a new audience is evaluated over the customers there are, in the background
        at = {"name": "In Austria", "where": {"trait": "country", "op": "=", "value": "AT"}}
        assert request(worker, "PUT", "/audiences/a-at", at, headers=ADMIN)[0] == 201
        await wait_for(lambda: _members(r, key, ["a-at"]), 30, "the existing customer to enter")
        last = (await _stream(r, prefix))[-1]
        assert (last["customer_id"], last["audience"], last["change"], last["reason"]) == (
            cid, "a-at", "entered", "definition")

        async def evaluated() -> bool:
            body = request(worker, "GET", "/audiences/a-at")[2]
            e = body["evaluation"]
            return bool(e and e["finished"] and e["done"] == e["total"] >= 2
                        and body["size"] == 1)
        # (progress is reported on the model timer: 20 s was too short once, on Apache Kafka
        # with the machine's 2 cores fully loaded; the whole test passes in ~22 s alone)
        await wait_for(evaluated, 60, "the evaluation to finish, with its progress")
        # a changed definition: the member leaves, once
        de = {"name": "In Germany", "where": {"trait": "country", "op": "=", "value": "DE"}}
        assert request(worker, "PUT", "/audiences/a-at", de, headers=ADMIN)[0] == 200
        await wait_for(lambda: _members(r, key, []), 30, "the member to leave")
        exits = [m for m in await _stream(r, prefix)
                 if m["audience"] == "a-at" and m["change"] == "exited"]
        assert [(m["customer_id"], m["reason"]) for m in exits] == [(cid, "definition")]
    finally:
        worker.stop()


async def test_a_segment_audience_follows_the_learned_segments(
        settings: Settings, tmp_path: Path, r: aioredis.Redis) -> None:
    settings = dataclasses.replace(settings, api_token="admin-t")
    worker, sim = await seeded_worker(settings, tmp_path)
    prefix = settings.redis_prefix
    try:
        sizes = await _sizes(r, prefix, "sizes")
        sid = max(sizes, key=lambda s: sizes[s])
        body = {"name": "Largest segment", "where": {"segment": sid}}
        assert request(worker, "PUT", "/audiences/a-seg", body, headers=ADMIN)[0] == 201

        # evaluated over the customers there are; its members are the segment's members
        async def settled() -> bool:
            a = request(worker, "GET", "/audiences/a-seg")[2]
            seg = (await _sizes(r, prefix, "sizes")).get(sid, 0)
            return bool(a["evaluation"] and a["evaluation"]["finished"]
                        and a["size"] == seg > 0)
        await wait_for(settled, 60, "the audience to hold the segment's customers")
        looked = {cid: request(worker, "GET", f"/customers/{cid}/segment", headers=ADMIN)[2]
                  for cid in sorted(sim.truth)[:60]}
        for cid, doc in looked.items():
            assert ("a-seg" in doc["audiences"]) == (doc["segment"] == sid), (cid, doc)
    finally:
        worker.stop()


async def test_two_workers_share_definitions_and_customers(
        settings: Settings, tmp_path: Path, r: aioredis.Redis) -> None:
    settings, a = await _worker(settings, tmp_path, {"a-mobile": MOBILE})
    b = WorkerProcess(dataclasses.replace(settings, web_port=free_port()), tmp_path, "b")
    prefix = settings.redis_prefix
    ids = [f"c2-{i}" for i in range(40)]
    mobile = {c for i, c in enumerate(ids) if i % 3 == 0}
    austria = {c for i, c in enumerate(ids) if i % 4 == 0}
    try:
        await b.wait_healthy()

        async def both_assigned() -> bool:
            return all(w.health()[1].get("status") == "ok" for w in (a, b)) and \
                all("segmenter_assigned_partitions 0.0" not in w.metrics_text() for w in (a, b))
        await wait_for(both_assigned, 60, "both workers to own partitions")
        await produce(settings, [ev(c, 0, "page_view", device="mobile" if c in mobile
                                    else "desktop", country="AT" if c in austria else "FR")
                                 for c in ids])
        await wait_for(lambda: lag_is_zero(settings), 60, "the events")
        await wait_for(lambda: _size(r, prefix, "a-mobile", len(mobile)), 30, "a-mobile")

        # defined on one worker, evaluated by both over the customers each holds
        at = {"name": "In Austria", "where": {"trait": "country", "op": "=", "value": "AT"}}
        assert request(b, "PUT", "/audiences/a-at", at, headers=ADMIN)[0] == 201

        async def evaluated() -> bool:
            e = request(a, "GET", "/audiences/a-at")[2]["evaluation"]
            return bool(e and e["finished"] and e["workers"] == 2 and e["total"] >= len(ids))
        await wait_for(evaluated, 30, "both workers to evaluate the new audience")
        await wait_for(lambda: _size(r, prefix, "a-at", len(austria)), 30, "a-at")
        changes = await _stream(r, prefix)
        entered = sorted((m["audience"], m["customer_id"]) for m in changes)
        assert entered == sorted([("a-mobile", c) for c in mobile]
                                 + [("a-at", c) for c in austria])  # each once, no exits
        assert {m["reason"] for m in changes if m["audience"] == "a-at"} == {"definition"}
    finally:
        a.stop()
        b.stop()


async def _size(r: aioredis.Redis, prefix: str, audience: str, n: int) -> bool:
    return (await _sizes(r, prefix)).get(audience) == n
