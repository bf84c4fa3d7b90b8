"""``segmenter demo``: the whole product on one machine, with a live summary."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from typing import Any

import orjson

from stream.credentials import kafka_options, redis_options
from stream.embedded import embedded_stack, free_port, require_demo_extra, stop_process
from stream.guard import first_token
from stream.kafka_io import ensure_topics, read_lag_once
from stream.redis_io import RedisStore, connect
from stream.settings import Settings, redact_url


def _spawn(args: list[str], env: dict[str, str], log_path: str) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "stream.cli", *args], env=env,
                                stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def fetch_json(url: str, timeout: float = 2.0) -> tuple[int, Any]:
    """GET a JSON route of a worker: ``(status, body)`` for any HTTP status, and
    ``(0, {"error": ...})`` when nothing answers (the worker is starting or gone)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, orjson.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())
    except OSError as exc:
        return 0, {"error": str(exc)}


def worker_health(port: int) -> dict[str, Any]:
    """A local worker's ``/health`` body, 200 or 503 alike (``processed`` is 0 until it answers)."""
    status, body = fetch_json(f"http://127.0.0.1:{port}/health")
    return dict(body) if status else {"status": "starting", "processed": 0}


class LastKnown:
    """What the summary last heard from the worker. A ``/health`` poll that gets no answer
    (the worker busy with a backfill answers late, or it is starting) keeps the last figures
    and says so; a rate is only computed between two answered polls, never across a failed
    one (the fallback of 0 events processed once gave negative, then inflated, rates)."""

    def __init__(self) -> None:
        self.health: dict[str, Any] | None = None
        self.at = 0.0  # monotonic time of the last answer
        self.answered = False  # the previous poll got an answer

    def head(self, health: dict[str, Any] | None, now: float, customers: int, lag: int) -> str:
        """The summary's first line after a poll: ``health`` is the ``/health`` body, or None
        when nothing answered; ``now`` the poll's monotonic time."""
        rate: float | None = None
        if health is not None:
            processed = int(health.get("processed", 0))
            before = self.health
            if self.answered and before is not None and now > self.at and \
                    processed >= int(before.get("processed", 0)):  # not a restarted worker
                rate = (processed - int(before.get("processed", 0))) / (now - self.at)
            self.health, self.at, self.answered = health, now, True
        else:
            self.answered = False
        shown = self.health or {}
        if health is not None:
            status = str(shown.get("status"))
            if shown.get("reasons"):
                status += f" ({'; '.join(map(str, shown['reasons']))})"
            if shown.get("degraded"):
                status += f" (degraded: {'; '.join(map(str, shown['degraded']))})"
        elif self.health is None:
            status = "starting"
        else:
            status = f"{shown.get('status')} (no answer, last known)"
        return (f"{'-' if rate is None else f'{rate:.0f}':>8} events/s  processed "
                f"{int(shown.get('processed', 0))}  customers {customers}  lag {lag}  "
                f"model v{shown.get('model_version', 0)}  worker {status}")


async def _summary(settings: Settings, store: RedisStore, seen: LastKnown) -> str:
    status, body = fetch_json(f"http://127.0.0.1:{settings.web_port}/health")
    polled = time.monotonic()
    try:
        lag = sum(p.lag for p in await read_lag_once(settings.kafka, settings.group,
                                                     settings.events_topic,
                                                     kafka_options(settings)))
    except Exception:
        lag = -1
    profiles = {sid: p for sid, p in (await store.profiles()).items()
                if p.get("status", "active") == "active"}
    # customers with a segment now (seg:sizes, kept by every write): it holds while the
    # backfill replays days in which no new customer arrives
    customers = sum(max(0, p["size"]) for p in profiles.values())
    lines = [f"[{time.strftime('%H:%M:%S')}] "
             + seen.head(dict(body) if status else None, polled, customers, lag)]
    for sid, p in sorted(profiles.items(), key=lambda kv: -kv[1]["size"]):
        lines.append(f"    {sid:>4} {p['size']:>7}  {p['name']}")
    return "\n".join(lines)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run_demo(customers: int, rate: float, days: float, seconds: float) -> int:
    """Start the embedded stack, a worker and the simulator; print a summary until Ctrl-C."""
    env_kafka = os.environ.get("SEGMENTER_KAFKA", "")
    env_redis = os.environ.get("SEGMENTER_REDIS_URL", "")
    own_servers = bool(env_kafka and env_redis)
    if not own_servers:
        require_demo_extra()  # a clear error, before anything starts
    # Ctrl-C even when started where SIGINT is inherited as ignored (background jobs), and
    # `kill` (SIGTERM) stop everything the same way.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    stack = contextlib.nullcontext((None, None)) if own_servers else embedded_stack()
    with stack as (kafka, redis):
        base = Settings.from_env()
        port = base.web_port if base.web_port != 6066 else _port_or_free(6066)
        settings = Settings.from_env({
            **demo_keys(os.environ),
            "SEGMENTER_KAFKA": kafka.url if kafka else env_kafka,
            "SEGMENTER_REDIS_URL": redis.url if redis else env_redis,
            "SEGMENTER_WEB_PORT": str(port),
        })
        env = {**os.environ, **settings.with_env()}
        logdir = os.path.join(os.getcwd(), "segmenter-demo-logs")
        os.makedirs(logdir, exist_ok=True)
        asyncio.run(ensure_topics(settings))
        print(f"Kafka  {settings.kafka}   Redis {redact_url(settings.redis_url)}   "
              f"(embedded: {kafka is not None})")
        # the two pages a newcomer opens first, as links a terminal makes clickable
        print(f"Dashboard http://127.0.0.1:{port}/   Shop http://127.0.0.1:{port}/demo/shop")
        print("Try:")
        print(f"  curl http://127.0.0.1:{port}/customers/c000001/segment")
        print(f"  curl -H 'Authorization: Bearer {first_token(settings.read_token)}' "
              f"http://127.0.0.1:{port}/customers/c000001")
        print(f"  curl http://127.0.0.1:{port}/segments")
        made = {k: v for k, v in settings.with_env().items() if k in DEMO_KEYS
                and not os.environ.get(k, "").strip()}
        if made:  # the demo's own keys, for trying the API (never in a log)
            print("  demo keys (random; set them to choose): " +
                  "  ".join(f"{k}={v}" for k, v in made.items()))
        # redis-cli is not part of the demo extra; the venv's Python always has a client
        print(f"  python -c \"import redis; print(redis.Redis(port="
              f"{redis.port if redis else '<port>'}).hgetall("
              f"'{settings.redis_prefix}customer:{{c000001}}'))\"  (or redis-cli, if installed)")
        print(f"Logs in {logdir}. Ctrl-C stops everything.\n", flush=True)
        worker = _spawn(["worker"], env, os.path.join(logdir, "worker.log"))
        # The history goes in as a backfill (as fast as the worker takes it), so the
        # segments shown are those of a shop with a past, not of its first days.
        simulator = _spawn(["simulate", "--customers", str(customers), "--rate", str(rate),
                            "--days", str(days), "--history-rate", "0"], env,
                           os.path.join(logdir, "simulator.log"))
        try:
            asyncio.run(_watch(settings, [worker, simulator], seconds))
        except KeyboardInterrupt:
            print("\nstopping...", flush=True)
        finally:
            stop_process(simulator, 15)
            stop_process(worker, 60)
        print("stopped worker, simulator, broker and Redis.")
    return 0


DEMO_KEYS = ("SEGMENTER_READ_TOKEN", "SEGMENTER_API_TOKEN", "SEGMENTER_WRITE_KEY")


def demo_keys(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with a random read token, admin token and write key for each not set: the
    demo's HTTP API is protected as a production one is, and still works out of the box (its
    shop sends events through its own server, so it needs no key in the browser).

    >>> keys = demo_keys({"SEGMENTER_API_TOKEN": "mine"})
    >>> keys["SEGMENTER_API_TOKEN"], len(keys["SEGMENTER_WRITE_KEY"]) > 20
    ('mine', True)
    """
    out = dict(env)
    for name in DEMO_KEYS:
        if not out.get(name, "").strip():
            out[name] = secrets.token_urlsafe(24)
    return out


def _port_or_free(port: int) -> int:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            return free_port()


async def _watch(settings: Settings, procs: list[subprocess.Popen[bytes]],
                 seconds: float) -> None:
    client = connect(settings.redis_url, **redis_options(settings))
    store = RedisStore(client, settings.redis_prefix, settings.stream_maxlen)
    seen = LastKnown()
    started = time.monotonic()
    try:
        while not seconds or time.monotonic() - started < seconds:
            await asyncio.sleep(3)
            if procs[0].poll() is not None:
                print("the worker exited; see segmenter-demo-logs/worker.log")
                return
            print(await _summary(settings, store, seen), flush=True)
    finally:
        await client.aclose()
