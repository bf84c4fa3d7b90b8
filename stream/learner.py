"""Model updates in a helper process, in parallel with the events that follow them.

A model update (sampling aside) is NumPy k-means over a couple of thousand customers: tens of
milliseconds every few thousand events, a fifth of a busy worker's time when run inline.
With :attr:`models.core.Segmenter.defer_learning`, the core hands each due update out as a
:class:`models.core.LearnJob`; :class:`Learner` starts ``model.learn`` on a pickled copy of
the model in one spawned process, and the core goes on updating features until it must
assign customers again, which is where it takes the learned copy
(:meth:`models.core.Segmenter.deliver`). The computation and the point where its outcome is
used are those of an inline update, so segments are the same.

Pickles only cross between this process and its own child (same code, same River), never
to storage: checkpoints stay JSON (:mod:`models.model`).
"""

from __future__ import annotations

import asyncio
import copy
import logging
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from models.core import LearnJob
from models.model import BaseModel
from stream.helper import spawn_helper

log = logging.getLogger(__name__)


def _learn(model: BaseModel, sample: list[list[float]], refresh: bool
           ) -> tuple[BaseModel, bool]:
    # In the helper, ``model`` is the executor's unpickled copy; inline, a deep copy.
    return model, model.learn(sample, refresh=refresh)


def _ready() -> bool:
    return True


class Learner:
    """Runs model updates in one helper process (spawned by :meth:`start`).

    Examples
    --------
    >>> from models.core import Segmenter, SegmenterConfig
    >>> seg = Segmenter(SegmenterConfig(min_segments=2, max_segments=2, warmup=2))
    >>> job = LearnJob([[0.0] * 18, [1.0] * 18, [5.0] * 18], True, {}, first=True)
    >>> async def once():
    ...     return await Learner().result(Learner().submit(seg.model, job), seg.model, job)
    >>> model, moved = asyncio.run(once())  # not started: inline, on a copy
    >>> moved, model.version, seg.model.version
    (True, 1, 0)
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._pool: ProcessPoolExecutor | None = None

    @property
    def running(self) -> bool:
        """True while updates run in the helper."""
        return self._pool is not None

    async def start(self) -> None:
        """Spawn the helper and wait until it has imported the models."""
        if not self.enabled or self._pool is not None:
            return
        try:
            self._pool = await spawn_helper(_ready)
        except (OSError, BrokenProcessPool) as exc:
            log.warning("model updates run in the worker: no helper process (%s)", exc)

    def submit(self, model: BaseModel, job: LearnJob) -> asyncio.Future[tuple[BaseModel, bool]]:
        """Start ``job`` on a copy of ``model`` now (the call returns at once)."""
        loop = asyncio.get_running_loop()
        if self._pool is not None:
            try:
                return loop.run_in_executor(self._pool, _learn, model, job.sample, job.refresh)
            except BrokenProcessPool:
                self.close()
        done: asyncio.Future[tuple[BaseModel, bool]] = loop.create_future()
        done.set_result(_learn(copy.deepcopy(model), job.sample, job.refresh))
        return done

    async def result(self, running: asyncio.Future[tuple[BaseModel, bool]], model: BaseModel,
                     job: LearnJob) -> tuple[BaseModel, bool]:
        """The outcome of ``running``; if the helper died meanwhile, ``job`` is run again
        here on a copy of ``model`` (which has not changed since :meth:`submit`)."""
        try:
            return await running
        except BrokenProcessPool as exc:  # killed (e.g. out of memory): go on inline
            log.warning("the model-update process died (%s); updating in the worker", exc)
            self.close()
            return _learn(copy.deepcopy(model), job.sample, job.refresh)

    def close(self) -> None:
        """Stop the helper."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
