"""Helper processes of a worker: one-process pools, spawned, that end when the worker does.

Spawned rather than forked: the worker runs threads and an event loop by then. A helper
polls its parent: if the worker is killed outright (``SIGKILL``, out of memory), its
helpers exit within half a second instead of living on as orphans.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor


def _exit_with(parent: int) -> None:
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-worker", daemon=True).start()


async def spawn_helper(ready: Callable[[], object]) -> ProcessPoolExecutor:
    """A one-process pool whose process has run ``ready`` (a module-level function of the
    module it will serve, so that its imports are done before the first real call)."""
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_exit_with, initargs=(os.getpid(),))
    try:
        await asyncio.get_running_loop().run_in_executor(pool, ready)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    return pool
