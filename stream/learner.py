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

from models.core import LearnJob
from models.model import BaseModel
from stream.helper import Helper, HelperGone


def _learn(model: BaseModel, sample: list[list[float]], refresh: bool
           ) -> tuple[BaseModel, bool]:
    # In the helper, ``model`` is the unpickled copy sent to it; inline, a deep copy.
    return model, model.learn(sample, refresh=refresh)


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

    def submit(self, model: BaseModel, job: LearnJob) -> asyncio.Future[tuple[BaseModel, bool]]:
        """Start ``job`` on a copy of ``model`` now (the call returns at once; not running:
        done inline)."""
        if self.running:
            return self.call(_learn, model, job.sample, job.refresh)
        done: asyncio.Future[tuple[BaseModel, bool]] = asyncio.get_running_loop().create_future()
        done.set_result(_learn(copy.deepcopy(model), job.sample, job.refresh))
        return done

    async def result(self, running: asyncio.Future[tuple[BaseModel, bool]], model: BaseModel,
                     job: LearnJob) -> tuple[BaseModel, bool]:
        """The outcome of ``running``; if the helper failed or went away meanwhile, ``job``
        is run here on a copy of ``model`` (which has not changed since :meth:`submit`)."""
        try:
            return await running
        except HelperGone:
            return _learn(copy.deepcopy(model), job.sample, job.refresh)
