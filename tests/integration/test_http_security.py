"""Hostile HTTP (issue #22): write keys (rotated), the per-client rate limit, body limits,
malformed bodies, ids with slashes, quotes, control characters and path traversal, wrong
methods, CORS preflights from an unlisted origin. Each is refused with a JSON error naming
the problem; nothing refused reaches the events topic or Redis, and the worker keeps
consuming (a later event is processed)."""

from __future__ import annotations

import dataclasses
import http.client
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from stream.kafka_io import ensure_topics
from stream.settings import Settings
from tests.integration.helpers import TopicReader, WorkerProcess, wait_for

OLD, NEW = "w-old-key", "w-new-key"
READ = {"Authorization": "Bearer r-token"}
HOSTILE_IDS = ["a/b", "../../health", "..", "%2e%2e", 'q"uo\'te', "nul\x00byte",
               "crlf\r\nX-Injected: 1", "tab\tand\x7fdel", "{seg:model}", "*", "ü/ß 客户"]


def call(settings: Settings, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    """Any request; the answer must be JSON whatever the status (a clear error)."""
    req = urllib.request.Request(f"http://127.0.0.1:{settings.web_port}{path}", data=body,
                                 method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            status, hdrs, raw = resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        status, hdrs, raw = exc.code, dict(exc.headers), exc.read()
    assert hdrs.get("Content-Type", "").startswith("application/json"), (status, hdrs, raw)
    return status, hdrs, orjson.loads(raw)


def ev(cid: str, n: int = 0) -> dict[str, Any]:
    return {"event_id": f"h-{n}-{cid}", "customer_id": cid, "type": "page_view",
            "timestamp": int(time.time() * 1000)}


def post(settings: Settings, body: Any, key: str | None = NEW, client: str = "10.0.0.1",
         **headers: str) -> tuple[int, dict[str, str], Any]:
    h = {"Content-Type": "application/json", "X-Forwarded-For": client, **headers}
    if key is not None:
        h["Authorization"] = f"Bearer {key}"
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return call(settings, "POST", "/events", raw, h)


def chunked(settings: Settings, size: int) -> tuple[int, Any]:
    """A body without Content-Length (chunked), so only reading it can find its size."""
    conn = http.client.HTTPConnection("127.0.0.1", settings.web_port, timeout=10)

    def chunks() -> Iterator[bytes]:
        yield b'[{"event_id": "x", "pad": "'
        for _ in range(size // 65536):
            yield b"a" * 65536
        yield b'"}]'
    try:
        conn.request("POST", "/events", body=chunks(), encode_chunked=True, headers={
            "Authorization": f"Bearer {NEW}", "Content-Type": "application/json",
            "X-Forwarded-For": "10.0.0.7"})
        resp = conn.getresponse()
        return resp.status, orjson.loads(resp.read())
    finally:
        conn.close()


async def test_hostile_requests_are_refused_nothing_written_worker_goes_on(
        settings: Settings, tmp_path: Path, r: aioredis.Redis) -> None:
    settings = dataclasses.replace(
        settings, write_key=f"{OLD}, {NEW}", read_token="r-token", public_fields="",
        events_rate=1.0, events_burst=500, forwarded_hops=1, max_body_bytes=256 * 1024)
    await ensure_topics(settings)
    worker = WorkerProcess(settings, tmp_path)
    accepted: set[str] = set()
    try:
        await worker.wait_healthy()
        # --- write keys: both values of the rotation work, nothing else does
        for key in (None, "", "w-old", f"{OLD},{NEW}", NEW.upper()):
            status, hdrs, body = post(settings, ev("nokey"), key=key)
            assert status == 401 and "SEGMENTER_WRITE_KEY" in body["error"], (key, body)
            assert hdrs["WWW-Authenticate"] == "Bearer"
        status, _, body = post(settings, [ev("rate-a", n) for n in range(10)], key=OLD,
                               client="10.0.0.2")
        assert (status, body) == (202, {"accepted": 10})
        status, _, body = post(settings, [ev("rate-b", n) for n in range(3)], key=NEW,
                               client="10.0.0.3")
        assert (status, body) == (202, {"accepted": 3})
        accepted |= {"rate-a", "rate-b"}

        # --- rate limit per client: 10.0.0.2 has 490 left of its 500 (1 more per second)
        status, hdrs, body = post(settings, [ev("limited", n) for n in range(500)],
                                  client="10.0.0.2")
        assert status == 429 and 1 <= int(hdrs["Retry-After"]) <= 10, body
        assert "SEGMENTER_EVENTS_RATE" in body["error"]
        # a forged left-hand X-Forwarded-For entry changes nothing (the proxy's is last)
        status, _, _ = post(settings, [ev("limited", n) for n in range(500)],
                            client="10.9.9.9, 10.0.0.2")
        assert status == 429
        # another client has its own bucket
        status, _, _ = post(settings, [ev("other-client", n) for n in range(500)],
                            client="10.0.0.4")
        assert status == 202
        accepted.add("other-client")

        # --- bodies: too large (declared or chunked), one event too large, malformed
        status, _, body = post(settings, b"[" + b" " * (300 * 1024) + b"]")
        assert status == 413 and "SEGMENTER_MAX_BODY_BYTES" in body["error"], body
        status, body = chunked(settings, 400 * 1024)
        assert status == 413 and "SEGMENTER_MAX_BODY_BYTES" in body["error"], body
        big = {**ev("big"), "properties": {"pad": "x" * 70_000}}
        status, _, body = post(settings, big, client="10.0.0.5")
        assert status == 413 and "64 KiB" in body["error"], body
        for raw, words in ((b"{", "not JSON"), (b"\xff\xfe", "not JSON"), (b"", "not JSON"),
                           (b"[" * 5000 + b"]" * 5000, "not JSON"), (b"[]", "1 to 500"),
                           (orjson.dumps([ev("many", n) for n in range(501)]), "1 to 500"),
                           (b'"text"', "event 0"), (b"[1]", "event 0"),
                           (orjson.dumps([ev("ok-then-bad"), {"type": "x"}]), "event 1"),
                           (orjson.dumps({**ev("neg"), "type": "purchase",
                                          "properties": {"amount": -1}}), "event 0"),
                           (orjson.dumps({**ev("future"), "timestamp": 2**62}), "event 0"),
                           (orjson.dumps({**ev("x" * 129)}), "event 0")):
            status, _, body = post(settings, raw, client="10.0.0.6")
            assert status == 400 and words in body["error"], (raw[:40], body)

        # --- ids: opaque, never a route or a key pattern; over 128 characters: refused
        for cid in HOSTILE_IDS:
            quoted = urllib.parse.quote(cid, safe="").replace(".", "%2E")
            for path in (f"/customers/{quoted}/segment", f"/customers/{quoted}"):
                got = call(settings, "GET", path)
                assert got[0] == 401, (cid, path, got)  # nothing is public here
                status, _, body = call(settings, "GET", path, headers=READ)
                assert status == 404 and body["customer_id"] == cid, (cid, path, body)
        status, _, body = call(settings, "GET", f"/customers/{'x' * 129}/segment", headers=READ)
        assert status == 400 and "128" in body["error"]
        status, _, body = call(settings, "POST", "/customers/segments",
                               orjson.dumps({"ids": HOSTILE_IDS}), READ)
        assert status == 200 and set(body["customers"]) == set(HOSTILE_IDS)
        assert all(v is None for v in body["customers"].values())

        # --- wrong methods and unknown routes: JSON errors, nothing done
        for method, path in (("PUT", "/events"), ("GET", "/events"), ("DELETE", "/segments"),
                             ("POST", "/customers/x/segment"), ("PATCH", "/audiences/a1"),
                             ("POST", "/openapi.json"), ("DELETE", "/health")):
            status, hdrs, body = call(settings, method, path, b"{}")
            assert status == 405 and "not allowed" in body["error"], (method, path, body)
            assert method not in hdrs.get("Allow", ""), hdrs
        status, _, body = call(settings, "GET", "/no/such/route")
        assert status == 404 and body["error"] == "no such route"
        status, _, body = call(settings, "DELETE", "/customers/rate-a")  # no admin token
        assert status == 401

        # --- CORS: the listed origin may, another may not even ask
        preflight = {"Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "authorization, content-type"}
        status, hdrs, body = call(settings, "OPTIONS", "/events",
                                  headers={"Origin": "http://evil.example", **preflight})
        assert status == 403 and "origin" in body["error"].lower(), body
        assert "Access-Control-Allow-Origin" not in hdrs
        req = urllib.request.Request(f"http://127.0.0.1:{settings.web_port}/events",
                                     method="OPTIONS",
                                     headers={"Origin": "http://shop.example", **preflight})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.headers["Access-Control-Allow-Origin"] == "http://shop.example"

        # --- the worker goes on: a later event is processed
        status, _, _ = post(settings, ev("after-hostile"), client="10.0.0.8")
        assert status == 202
        accepted.add("after-hostile")
        state = f"{settings.redis_prefix}state:{{after-hostile}}"

        async def processed() -> bool:
            return bool(await r.exists(state))
        await wait_for(processed, 60, "the event after the hostile requests")
        assert worker.health()[0] == 200

        # --- nothing refused was written: the topic holds the accepted events only, and
        # Redis no key of any other id
        async with TopicReader(settings, settings.events_topic) as topic:
            async def all_read() -> bool:
                return len(await topic.read()) >= 10 + 3 + 500 + 1
            await wait_for(all_read, 30, "the accepted events on the topic")
            await topic.read(1000)
            keys = {m.key.decode() for m in topic.messages}
            assert keys == accepted and len(topic.messages) == 10 + 3 + 500 + 1
        async for key in r.scan_iter(match=f"{settings.redis_prefix}*".encode()):
            name = key.decode(errors="replace")
            if name.startswith(f"{settings.redis_prefix}state:"):
                assert name[len(settings.redis_prefix) + 7:-1] in accepted, name
    finally:
        assert worker.stop() == 0, worker.log()
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert OLD not in log and NEW not in log and "r-token" not in log
