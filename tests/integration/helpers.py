"""Helpers for integration tests: worker processes, producing, consuming, waiting."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from stream.credentials import kafka_options
from stream.demo import fetch_json
from stream.embedded import stop_process
from stream.settings import Settings


class WorkerProcess:
    """``segmenter worker`` as a real subprocess."""

    def __init__(self, settings: Settings, log_dir: Path, name: str = "worker") -> None:
        self.settings = settings
        self.log_path = log_dir / f"{name}.log"
        env = {**os.environ, **settings.with_env()}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "stream.cli", "worker"], env=env, stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def health(self) -> tuple[int, dict[str, Any]]:
        """``/health`` status and body (status 0 while nothing answers)."""
        return self.get("/health")

    def get(self, path: str) -> tuple[int, Any]:
        return fetch_json(f"http://127.0.0.1:{self.settings.web_port}{path}", timeout=5)

    def metrics_text(self) -> str:
        url = f"http://127.0.0.1:{self.settings.web_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            return str(r.read().decode())

    async def wait_healthy(self, timeout: float = 60) -> None:
        """Wait until ``/health`` answers 200; fail at once if the worker exits."""
        async def healthy() -> bool:
            assert self.proc.poll() is None, self.log()
            return self.health()[0] == 200
        await wait_for(healthy, timeout, "the worker to be healthy", every=0.3,
                       detail=lambda: f"{self.health()}\n{self.log()}")

    def stop(self, timeout: float = 30) -> int:
        return stop_process(self.proc, timeout)

    def children(self) -> list[int]:
        """Pids of the worker's child processes (its helpers; Linux ``/proc``)."""
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(p) for p in path.read_text().split()] if path.exists() else []

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def running(pid: int) -> bool:
    """True while ``pid`` is a live process (not gone, not a zombie)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


async def produce(settings: Settings, messages: list[tuple[bytes | None, bytes | None]],
                  topic: str | None = None, durable: bool = False) -> None:
    """Send in large batches (as real producers do); ``durable``: acknowledged by every
    in-sync replica and idempotent (no loss, no duplicate, same order through a broker
    failure)."""
    safety: dict[str, Any] = {"acks": "all", "enable_idempotence": True} if durable else {}
    p = AIOKafkaProducer(bootstrap_servers=settings.kafka, linger_ms=20,
                         max_batch_size=512 * 1024, max_request_size=4 * 1024 * 1024, **safety,
                         **kafka_options(settings))
    await p.start()
    try:
        futures = [await p.send(topic or settings.events_topic, key=k, value=v)
                   for k, v in messages]
        await asyncio.gather(*futures)
    finally:
        await p.stop()


async def consume_all(settings: Settings, topic: str, expect: int,
                      timeout: float = 30) -> list[Any]:
    """Read ``expect`` messages of a topic from the beginning (no group)."""
    c = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka, group_id=None,
                         auto_offset_reset="earliest", enable_auto_commit=False,
                         **kafka_options(settings))
    await c.start()
    out: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        while len(out) < expect and time.monotonic() < deadline:
            batch = await c.getmany(timeout_ms=500)
            for msgs in batch.values():
                out.extend(msgs)
    finally:
        await c.stop()
    return out


class TopicReader:
    """Everything on a topic from its start, read as it arrives (no group); an async
    context manager."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka, group_id=None,
                                         auto_offset_reset="earliest", enable_auto_commit=False,
                                         **kafka_options(settings))
        self.messages: list[Any] = []
        """What was read so far, each partition's messages in offset order."""

    async def __aenter__(self) -> TopicReader:
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()

    async def read(self, timeout_ms: int = 300) -> list[Any]:
        """Add what arrived since the last read; return everything read so far."""
        for msgs in (await self.consumer.getmany(timeout_ms=timeout_ms)).values():
            self.messages.extend(msgs)
        return self.messages


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float, what: str, *,
                   every: float = 0.5, detail: Callable[[], str] | None = None) -> None:
    """Poll ``check`` every ``every`` seconds until it is true; fail after ``timeout``
    seconds, naming ``what`` was awaited and, with ``detail``, what was seen last.

    The event loop keeps running between polls (never ``time.sleep`` in an async test).
    """
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() >= deadline:
            seen = f"; last seen: {detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{seen}")
        await asyncio.sleep(every)
