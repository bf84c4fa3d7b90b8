"""Model updates in a helper process, in parallel with the events that follow them.

A model update (sampling aside) is NumPy k-means over a couple of thousand customers: tens of
milliseconds every few thousand events, a fifth of a busy worker's time when run inline.
:class:`ModelUpdates` drives the core through a batch as :meth:`models.core.Segmenter.apply`
does, with one difference: a due :class:`~models.learning.LearnJob` is sent to the helper
and the core goes on folding events into features; the job's
:class:`~models.learning.Learned` model is taken where the core next assigns customers. The
computation and the point where its outcome is used are those of an inline update, so
segments are the same (``tests/unit/test_updates.py``).

At a batch's end, an update still running need not be waited for: the customers changed
since the last update wait for it with the next batch's (:attr:`Segmenter.changed`), or until
:meth:`ModelUpdates.apply` is called with ``settle`` (a commit must).

Pickles only cross between this process and its own child (same code, same River), never to
storage: checkpoints stay JSON (:mod:`models.model`).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import time

from models.config import BatchResult
from models.core import Parsed, Segmenter
from models.learning import Learned, LearnJob, fresh_names, learn
from models.model import BaseModel
from models.state import CustomerState
from stream.helper import Helper, HelperGone

_last: Learned | None = None  # in the helper: the outcome of its last update


def _learn(model: BaseModel, job: LearnJob) -> Learned:
    # In the helper, ``model`` is the unpickled copy sent to it.
    global _last
    _last = learn(model, job)
    return _last


def _learn_follow(job: LearnJob) -> Learned:
    # A refresh on the outcome of the update before it, as the worker will hold that: the
    # worker names segments and takes lifecycle events of each update it takes.
    if _last is None:
        raise RuntimeError("the update before this one failed")
    if _last.moved:
        _last.model.names = fresh_names(_last.model)
        _last.model.take_lifecycle()
    return _learn(_last.model, job)


Running = asyncio.Future[Learned]


class ModelUpdates(Helper):
    """Runs a worker's model updates in one helper process (spawned by :meth:`start`);
    inline while it is not running.

    Examples
    --------
    >>> from models.core import SegmenterConfig
    >>> seg = Segmenter(SegmenterConfig(min_segments=2, max_segments=2, warmup=3,
    ...                                 update_every=1))
    >>> seg.schedule.count(1)
    >>> job = seg.plan_update({})
    >>> job = LearnJob(job.id, [[0.0] * 18, [1.0] * 18, [5.0] * 18], True, True, {})
    >>> async def once() -> Learned:  # not started: the update runs inline, on a copy
    ...     updates = ModelUpdates()
    ...     return await updates.result(updates.submit(seg.model, job), seg.model, job)
    >>> learned = asyncio.run(once())
    >>> learned.moved, learned.model.version, seg.model.version
    (True, 1, 0)
    """

    fallback = "model updates run"

    def __init__(self, enabled: bool = True) -> None:
        super().__init__(enabled)
        self._out: tuple[LearnJob, Running] | None = None  # the update whose outcome is next
        self._early: dict[int, Running] = {}  # a follow-up started early, by job id

    @property
    def out(self) -> bool:
        """An update is running whose outcome the core has not taken yet."""
        return self._out is not None

    def pending(self) -> Running | None:
        """The update whose outcome is next, while it runs (None: none out)."""
        return self._out[1] if self._out is not None else None

    async def apply(self, seg: Segmenter, parsed: Parsed, loaded: dict[str, CustomerState],
                    settle: bool = False) -> tuple[BatchResult, float]:
        """:meth:`Segmenter.apply` with its model updates in the helper; returns the result
        and the seconds spent waiting for the helper. ``settle`` (usually with no events)
        takes an update still running, and assigns everyone waiting for it."""
        res = BatchResult()
        seg.cache.load(loaded)
        done, waited = 0, 0.0
        while True:
            done = seg.consume(parsed, done, res)
            end = done >= len(parsed)
            if self._out is not None:
                out, running = self._out
                if end and not seg.schedule.due and not settle and not running.done():
                    break  # the changed customers wait for it with the next batch
                waiting = time.perf_counter()
                learned = await self.result(running, seg.model, out)
                waited += time.perf_counter() - waiting
                self._out = None
                seg.take(out, learned, res)
            assigned = seg.assign_changed(res)
            started = time.perf_counter()  # the "learn" stage: sampling and hand-over
            due = seg.plan_update(assigned)
            if due is not None:
                self._start(seg.model, due)
            res.learn_seconds += time.perf_counter() - started
            if end and not (settle and self._out is not None):
                break
        return res, waited

    def _start(self, model: BaseModel, job: LearnJob) -> None:
        early, self._early = self._early.pop(job.id, None), {}  # others were planned on
        self._out = (job, early or self.submit(model, job))  # a model since replaced
        if self.running and job.follow is not None and job.follow_id is not None:
            self._early[job.follow_id] = self.call(_learn_follow, LearnJob(
                job.follow_id, job.follow, True, False, {}))

    def submit(self, model: BaseModel, job: LearnJob) -> Running:
        """Start ``job`` on a copy of ``model`` now (not running: done inline, on a copy)."""
        if self.running:
            # what learning reads: not the changed customers' events (a pickle of
            # thousands of events per update, for the core to take back unread)
            return self.call(_learn, model, dataclasses.replace(job, changed={}))
        done: Running = asyncio.get_running_loop().create_future()
        done.set_result(learn(copy.deepcopy(model), job))
        return done

    async def result(self, running: Running, model: BaseModel, job: LearnJob) -> Learned:
        """The outcome of ``running``; if the helper failed or went away meanwhile, ``job``
        is run here on a copy of ``model`` (which has not changed since :meth:`submit`)."""
        try:
            return await running
        except HelperGone:
            return learn(copy.deepcopy(model), job)
