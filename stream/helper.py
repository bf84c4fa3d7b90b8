"""Helper processes of a worker: a spawned process serving calls over a pipe.

The worker's event loop writes a call to the pipe and reads the reply when the pipe is
readable (``loop.add_reader``): no thread in the worker is involved. (A process pool's
manager and feeder threads need the GIL for every hand-over, and the event loop holds it
while it applies a batch: measured, the replies then came late enough to stall the loop.)

Spawned rather than forked: the worker runs threads and an event loop by then. A helper
ends when its pipe closes and, should that not happen, when its parent is gone (it polls):
a worker killed outright leaves no helper behind.
"""

from __future__ import annotations

import asyncio
import collections
import importlib
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from stream.errors import reason

log = logging.getLogger(__name__)


class HelperGone(RuntimeError):
    """The helper process died or was closed; its calls are to be done inline."""


def _exit_with(parent: int) -> None:
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-worker", daemon=True).start()


def _serve(conn: Connection, parent: int) -> None:
    """The helper's loop: one call at a time, replies in order."""
    _exit_with(parent)
    while True:
        try:
            fn, args = conn.recv()
        except (EOFError, OSError):
            os._exit(0)
        try:
            reply: tuple[bool, Any] = (True, fn(*args))
        except Exception as exc:  # reported to the caller, which redoes the call inline
            reply = (False, f"{type(exc).__name__}: {exc}")
        conn.send(reply)


def _import(module: str) -> None:
    importlib.import_module(module)


class Helper:
    """One helper process, started by :meth:`start`; while it is not running (disabled, not
    started, or gone), the owner does the work inline."""

    fallback = "work runs"
    """Says, in a log line, what runs in the worker instead."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._conn: Connection | None = None
        self._proc: Any = None
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()

    @property
    def running(self) -> bool:
        """True while the helper process takes the work."""
        return self._conn is not None

    async def start(self) -> None:
        """Spawn the helper and wait until it has imported the module of this class (the
        one whose functions it will run), so the first real call does not wait for it."""
        if not self.enabled or self._conn is not None:
            return
        ctx = multiprocessing.get_context("spawn")
        ours, theirs = ctx.Pipe()
        try:
            self._proc = ctx.Process(target=_serve, args=(theirs, os.getpid()), daemon=True,
                                     name=f"segmenter-{type(self).__name__.lower()}")
            self._proc.start()
        except OSError as exc:
            log.warning("%s in the worker: no helper process (%s)", self.fallback, reason(exc))
            return
        finally:
            theirs.close()
        self._conn = ours
        asyncio.get_running_loop().add_reader(ours.fileno(), self._reply)
        try:
            await self.call(_import, type(self).__module__)
        except HelperGone as exc:
            log.warning("%s in the worker: the helper did not start (%s)", self.fallback,
                        reason(exc))

    def call(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Send ``fn(*args)`` to the helper now; the future gets its result, or
        :class:`HelperGone`."""
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._conn is None:
            done.set_exception(HelperGone("not running"))
            return done
        self._waiting.append(done)
        try:
            self._conn.send((fn, args))
        except (OSError, ValueError) as exc:
            self._gone(exc)
        return done

    def _reply(self) -> None:
        assert self._conn is not None
        try:
            ok, value = self._conn.recv()
        except (EOFError, OSError) as exc:
            self._gone(exc)
            return
        done = self._waiting.popleft()
        if done.done():
            return
        if ok:
            done.set_result(value)
        else:
            done.set_exception(HelperGone(value))

    def _gone(self, exc: BaseException) -> None:
        log.warning("a helper process is gone (%r); %s in the worker", exc, self.fallback)
        self.close()

    def close(self) -> None:
        """Stop the helper (it exits when its pipe closes); pending calls get
        :class:`HelperGone`."""
        if self._conn is not None:
            asyncio.get_running_loop().remove_reader(self._conn.fileno())
            self._conn.close()
            self._conn = None
        if self._proc is not None:  # it exits at the closed pipe; reap it
            self._proc.join(1.0)
            if self._proc.is_alive():
                self._proc.kill()
            self._proc = None
        while self._waiting:
            done = self._waiting.popleft()
            if not done.done():
                done.set_exception(HelperGone("closed"))
