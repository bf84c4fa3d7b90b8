"""Model updates in a helper process, in parallel with the events that follow them.

A model update (sampling aside) is NumPy k-means over a couple of thousand customers: tens of
milliseconds every few thousand events, a fifth of a busy worker's time when run inline.
With :attr:`models.core.Segmenter.defer_learning`, the core hands each due update out as a
:class:`models.learning.LearnJob`; :class:`Learner` starts ``model.learn`` on a pickled copy of
the model in one spawned process, and the core goes on updating features until it must
assign customers again, which is where it takes the learned copy
(:meth:`models.learning.Learning.deliver`). The computation and the point where its outcome is
used are those of an inline update, so segments are the same.

Pickles only cross between this process and its own child (same code, same River), never
to storage: checkpoints stay JSON (:mod:`models.model`).
"""

from __future__ import annotations

import asyncio
import copy
import time

from models.config import BatchResult
from models.core import Parsed, Segmenter
from models.features import CustomerState
from models.learning import LearnJob, fresh_names
from models.model import BaseModel
from stream.helper import Helper, HelperGone

_last: BaseModel | None = None  # in the helper: the outcome of its last update
_last_moved = False


def _learn(model: BaseModel, sample: list[list[float]], refresh: bool, keep: bool = False
           ) -> tuple[BaseModel, bool]:
    # In the helper, ``model`` is the unpickled copy sent to it; inline, a deep copy.
    global _last, _last_moved
    _last = None
    moved = model.learn(sample, refresh=refresh)
    if keep:
        _last, _last_moved = model, moved
    return model, moved


def _learn_next(sample: list[list[float]]) -> tuple[BaseModel, bool]:
    # A refresh on the outcome of the update before it, as the worker will hold that: the
    # worker names segments and takes lifecycle events of each update it adopts.
    if _last is None:
        raise RuntimeError("the update before this one failed")
    if _last_moved:
        _last.names = fresh_names(_last)
        _last.take_lifecycle()
    return _learn(_last, sample, True, keep=True)


class Learner(Helper):
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

    fallback = "model updates run"

    def __init__(self, enabled: bool = True) -> None:
        super().__init__(enabled)
        # updates sent to the helper, by LearnJob.seq (the current one's, maybe the next's)
        self._running: dict[int, asyncio.Future[tuple[BaseModel, bool]]] = {}

    async def apply(self, seg: Segmenter, parsed: Parsed, loaded: dict[str, CustomerState],
                    now_ms: int, settle: bool = False) -> tuple[BatchResult, float]:
        """``seg.apply`` with its model updates in the helper while events go on; returns the
        result and the seconds spent waiting for the helper. A batch may end with an update
        still out (:attr:`Segmenter.carrying`); ``settle`` (with no events: ``parsed=[]``)
        waits for it, as a commit must."""
        seg.defer_learning = self.running
        result = seg.apply(parsed, loaded, now_ms)
        waited = 0.0
        while result.resume is not None:
            job = seg.job
            assert job is not None
            running = self._running.get(job.seq)
            if not seg.job_sent:
                self._running = {job.seq: self.submit(seg.model, job)}
                seg.job_sent = True
                follow = self.submit_follow(job)
                if follow is not None:
                    self._running[job.seq + 1] = follow
                    seg.follow_sent = True
            elif seg.carrying and not settle and not (running and running.done()):
                break  # the update goes on with the next batch
            else:
                waiting = time.perf_counter()
                assert running is not None
                seg.deliver(*await self.result(running, seg.model, job))
                waited += time.perf_counter() - waiting
            seg.apply(parsed, {}, now_ms, result, result.resume)
        return result, waited

    def submit(self, model: BaseModel, job: LearnJob) -> asyncio.Future[tuple[BaseModel, bool]]:
        """Start ``job`` on a copy of ``model`` now (the call returns at once; not running:
        done inline)."""
        if self.running:
            return self.call(_learn, model, job.sample, job.refresh, True)
        done: asyncio.Future[tuple[BaseModel, bool]] = asyncio.get_running_loop().create_future()
        done.set_result(_learn(copy.deepcopy(model), job.sample, job.refresh))
        return done

    def submit_follow(self, job: LearnJob) -> asyncio.Future[tuple[BaseModel, bool]] | None:
        """Start ``job.follow`` (the next update, a refresh) on the outcome of ``job``, which
        was the last one submitted; None when the helper is not running (it then starts
        when due, as any other update)."""
        if not self.running or job.follow is None:
            return None
        return self.call(_learn_next, job.follow)

    async def result(self, running: asyncio.Future[tuple[BaseModel, bool]], model: BaseModel,
                     job: LearnJob) -> tuple[BaseModel, bool]:
        """The outcome of ``running``; if the helper failed or went away meanwhile, ``job``
        is run here on a copy of ``model`` (which has not changed since :meth:`submit`)."""
        try:
            return await running
        except HelperGone:
            return _learn(copy.deepcopy(model), job.sample, job.refresh)
