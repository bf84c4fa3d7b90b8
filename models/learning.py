"""When and on what the model learns: the update schedule of :class:`models.core.Segmenter`.

Every ``update_every`` valid events is a *flush point*: the customers changed since the last
one are assigned with the current model, then the model updates on a sample of current
customers (every ``refresh_every``-th update re-clusters a larger sample: a refresh). Inline,
the update runs there; with ``defer_learning`` it is handed out as a :class:`LearnJob` and
its outcome is taken (:meth:`Learning.deliver`) at the next flush point, so the outcome is the
same whichever way updates run.

Examples
--------
>>> from models.config import SegmenterConfig
>>> from models.core import Segmenter
>>> seg = Segmenter(SegmenterConfig(min_segments=2, max_segments=2, warmup=2, update_every=2))
>>> seg.learning_sample(10)  # nobody is cached yet
[]
>>> LearnJob([[0.0] * 18], refresh=True, changed={}, first=True).seq
0
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from dataclasses import dataclass

from models.config import BatchResult, SegmenterConfig, make_model
from models.events import Event
from models.features import DAY_MS, CustomerState
from models.model import BaseModel
from models.profiles import name_segment, stable_names
from models.rescoring import population_sample

__all__ = ["LearnJob", "Learning", "fresh_names"]


def fresh_names(model: BaseModel) -> dict[str, str]:
    """Segment names after an update: from the centres, each segment keeping its old name
    while that still fits (:func:`models.profiles.stable_names`)."""
    fresh = {sid: name_segment(z) for sid, z in
             zip(model.ids, model.centres_scaled().tolist(), strict=True)}
    return stable_names(model.names, fresh)


@dataclass(frozen=True, slots=True)
class LearnJob:
    """A due model update: what ``BaseModel.learn`` is called with, and what comes after."""

    sample: list[list[float]]
    """Model-space vectors of current customers."""
    refresh: bool
    """Re-cluster the sample (a refresh) rather than only step towards it."""
    changed: dict[str, Event]
    """Customers whose events made the update due (assigned once a first model exists)."""
    first: bool
    """The model was not ready yet: this update seeds it."""
    seq: int = 0
    """Its number (the next update's is one more)."""
    follow: list[list[float]] | None = None
    """The next update's sample when that one will be a refresh, taken now so it can start
    on this update's outcome at once (:attr:`Learning.follow_sent`) and have a whole
    interval to run: a refresh costs ~20× a normal update."""


class Learning:
    """The model, its names and its update schedule; the base of :class:`Segmenter`, which
    supplies the customers (:attr:`states`) and their assignment (:meth:`_assign`)."""

    def __init__(self, config: SegmenterConfig, model: BaseModel | None = None) -> None:
        self.config = config
        self.model = model or make_model(config)
        self.learner = config.learner
        self.states: OrderedDict[str, CustomerState] = OrderedDict()
        self.half_life_ms = config.half_life_days * DAY_MS
        self.watermark = 0  # the latest event time seen: "now" for time-based features
        self.remote: dict[str, tuple[int, list[list[float]]]] = {}
        """Other workers' samples of current customers: worker -> (population, rows)."""
        self.sample_due = False  # a non-learner's turn to publish its sample
        self.warming = False
        """True while states of newly assigned partitions are being read from Redis
        (:meth:`Segmenter.warm`): model updates and samples wait, so they do not miss
        those customers."""
        self._rng = random.Random(config.seed)
        self._since_update = 0
        self._updates = 0
        self._force_refresh = False
        self.defer_learning = False
        """True: model updates run elsewhere (:attr:`job`, :meth:`deliver`), see
        :meth:`Segmenter.apply`."""
        self.job: LearnJob | None = None
        """The deferred model update in progress."""
        self.job_sent = False
        """The caller has started :attr:`job` (set by the caller)."""
        self._learned: tuple[BaseModel, bool] | None = None
        self._early: list[list[float]] | None = None  # the next update's (a refresh) sample
        self.follow_sent = False
        """The caller has started :attr:`job`'s ``follow`` on the job's outcome (set by the
        caller): the next update then starts already sent."""
        self._carry: dict[str, Event] | None = None  # a flush point waiting for the model
        self._pending: set[str] = set()  # changed before the model was ready
        self._sweep: list[str] = []  # customers left to re-score in this pass
        self.dirty: dict[str, None] = {}  # changed since the last drain (an ordered set)

    def _assign(self, ids: list[str], changed: dict[str, Event], res: BatchResult) -> None:
        raise NotImplementedError  # Segmenter's

    @property
    def names(self) -> dict[str, str]:
        """Segment names by id: the model's (carried in snapshots, the same on every worker)."""
        return self.model.names

    def _name(self) -> None:
        before = self.model.names
        self.model.names = fresh_names(self.model)
        self._mark_renamed(before)

    def _mark_renamed(self, before: dict[str, str]) -> None:
        """Customers of a renamed segment get the new name at the next drain."""
        renamed = {sid for sid, n in self.names.items() if before.get(sid, n) != n}
        if renamed:
            self.dirty.update(dict.fromkeys(
                c for c, s in self.states.items() if s.segment in renamed))

    def adopt(self, model: BaseModel) -> BatchResult | None:
        """Assign with ``model`` (a snapshot from the learner) from now on; None if it is not
        newer. Customers who waited for a first model are assigned now; the others are
        re-scored by :meth:`Segmenter.rescore`, rate-limited."""
        if model.version <= self.model.version:
            return None
        before, self.model = self.names, model
        self._early, self.follow_sent = None, False  # planned on the replaced model
        self._mark_renamed(before)
        self._sweep = []  # start a fresh re-scoring pass under the new model
        res = BatchResult(model_updated=True)
        pending = sorted(c for c in self._pending if c in self.states)
        self._pending.clear()
        self._assign(pending, {}, res)
        return res

    def update_if_due(self) -> BatchResult:
        """Run a model update when enough events (here or, via :meth:`add_remote`, on other
        workers) arrived since the last one; for a learner whose own partitions are quiet."""
        res = BatchResult()
        if self._since_update >= self.config.update_every and self.job is None:
            self._flush({}, res)  # inline: rare, and nobody would start a deferred job here
        return res

    @property
    def carrying(self) -> bool:
        """:meth:`Segmenter.apply` stopped at a batch's end, not at an update point, for the
        outcome of :attr:`job` (sent): the batch may end without it."""
        return (self._carry is not None and self.job is not None and self.job_sent
                and self._learned is None and self._since_update < self.config.update_every)

    def deliver(self, model: BaseModel, moved: bool) -> None:
        """The outcome of :attr:`job`: ``model`` is a copy of :attr:`model` after
        ``learn(job.sample, refresh=job.refresh)`` returned ``moved``."""
        assert self.job is not None, "no model update is out"
        self._learned = (model, moved)

    def _flush(self, changed: dict[str, Event], res: BatchResult, defer: bool = False) -> bool:
        """Assign the changed customers with the current model, then update the model when an
        update is due (``defer``: leave it in :attr:`job`); so every event is scored by the
        version current when it arrived, whatever the batching. False (nothing done) while a
        deferred update's outcome is still out."""
        if self.job is not None:
            if self._learned is None:
                return False
            (model, moved), job = self._learned, self.job
            self.job, self.job_sent, self._learned = None, False, None
            self.model = model
            self._learned_post(job, moved, res)
        ids = list(changed)
        if self.model.ready:
            self._assign(ids, changed, res)
        else:
            self._pending.update(ids)
            self.dirty.update(dict.fromkeys(ids))
        if self._since_update < self.config.update_every or self.warming:
            return True
        self._since_update = 0
        if not self.learner:
            self.sample_due = True
            self._early, self.follow_sent = None, False
            return True
        started = time.perf_counter()
        self._updates += 1
        cfg = self.config
        early, sent, self._early, self.follow_sent = self._early, self.follow_sent, None, False
        refresh = (early is not None or not self.model.ready or self._force_refresh
                   or self._updates % cfg.refresh_every == 0)
        sample = early if early is not None else self.learning_sample(
            cfg.refresh_sample if refresh else cfg.learn_sample)
        if (self._updates + 1) % cfg.refresh_every == 0 and not refresh:
            self._early = self.learning_sample(cfg.refresh_sample)
        job = LearnJob(sample, refresh, changed, not self.model.ready, self._updates,
                       self._early)
        if defer:
            self.job, self.job_sent = job, sent and early is not None
        else:
            self._learned_post(job, self.model.learn(job.sample, refresh=refresh), res)
        res.learn_seconds += time.perf_counter() - started
        return True

    def _learned_post(self, job: LearnJob, moved: bool, res: BatchResult) -> None:
        """What follows a model update (:attr:`model` is the updated model)."""
        if not moved:
            return
        self._force_refresh = False
        res.model_updated = True
        self._name()
        self._sweep = []
        scaled, units = self.model.centres_scaled(), self.model.centres_model_space()
        for e in self.model.take_lifecycle():
            res.lifecycle.append({**e, "name": self.names.get(e["segment"], "")})
            if e["segment"] in self.model.ids:
                i = self.model.ids.index(e["segment"])
                res.centres[e["segment"]] = (scaled[i].tolist(), units[i].tolist())
        if job.first:
            pending = sorted(self._pending)
            self._pending.clear()
            self._assign(pending, job.changed, res)

    def population_sample(self, n: int) -> list[list[float]]:
        """Model-space vectors of up to ``n`` cached customers as of the watermark."""
        return population_sample(self.states.values(), n, self.watermark, self.half_life_ms,
                                 self.config.active_days * DAY_MS, self._rng)

    def learning_sample(self, n: int) -> list[list[float]]:
        """About ``n`` current customers of all workers, each worker in proportion to the
        customers it holds (its own from its cache, the others' from :attr:`remote`)."""
        total = len(self.states) + sum(pop for pop, _ in self.remote.values())
        if not self.remote or total == 0:
            return self.population_sample(n)
        rows = self.population_sample(max(1, round(n * len(self.states) / total)))
        for _, (pop, theirs) in sorted(self.remote.items()):
            want = min(len(theirs), round(n * pop / total))
            rows.extend(self._rng.sample(theirs, want))
        return rows

    def add_remote(self, worker: str, population: int, rows: list[list[float]],
                   events: int) -> None:
        """A sample published by another worker; its events count towards the next update."""
        self.remote[worker] = (population, rows)
        self._since_update += events
