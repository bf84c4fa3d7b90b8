"""When and on what the model learns: the update schedule, and its two messages.

Every ``update_every`` valid events, or once event time has moved ``update_every_days`` past
the last update (whichever comes first), an update is *due*. The core (:class:`models.core.
Segmenter`) first assigns the customers changed since the last update with the model it has,
then asks :meth:`UpdateSchedule.plan` for a :class:`LearnJob` (a sample of current
customers). Whoever runs the job, inline (:func:`learn`) or in a helper process
(:mod:`stream.updates`), hands back a :class:`Learned` model, which the core takes
(:meth:`UpdateSchedule.took`) before it next assigns anyone. So every event is scored by the
model version current when it arrived, whichever way updates run.

Every ``refresh_every``-th update is a *refresh*: it re-clusters a larger sample and costs
~20x a normal update. Its sample is taken one update early (:attr:`LearnJob.follow`, with the
job id it will have) so that a helper can start it right after the update before it and have a
whole interval to run.

Examples
--------
>>> from models.cache import CustomerCache
>>> from models.algorithms import model_for
>>> from models.config import SegmenterConfig
>>> cfg = SegmenterConfig(min_segments=2, max_segments=2, warmup=2, update_every=2)
>>> schedule = UpdateSchedule(cfg)
>>> schedule.count(2); schedule.due
True
>>> job = schedule.plan(CustomerCache(10), model_for(cfg), {})
>>> job.refresh, job.first, job.sample  # nobody is cached yet
(True, True, [])
>>> schedule.due
False
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice

from models.cache import CustomerCache
from models.config import SegmenterConfig
from models.events import Event
from models.features import DAY_MS, FEATURE_NAMES, from_model_space
from models.model import BaseModel
from models.profiles import name_segment, stable_names
from models.rescoring import population_sample

__all__ = ["LearnJob", "Learned", "UpdateSchedule", "fresh_names", "learn"]


@dataclass(frozen=True, slots=True)
class LearnJob:
    """A due model update: what :meth:`BaseModel.learn` is called with."""

    id: int
    """Unique per schedule; a follow-up planned early keeps the id it was given then."""
    sample: list[list[float]]
    """Model-space vectors of current customers."""
    refresh: bool
    """Re-cluster the sample (a refresh) rather than only step towards it."""
    first: bool
    """The model was not ready yet: this update seeds it."""
    changed: dict[str, Event]
    """Customers whose events made the update due (a first model assigns them as such)."""
    follow: list[list[float]] | None = None
    """The next update's sample when that one will be a refresh, taken now."""
    follow_id: int | None = None
    """The id the next update (with :attr:`follow` as its sample) will have."""


@dataclass(frozen=True, slots=True)
class Learned:
    """The outcome of a :class:`LearnJob`."""

    model: BaseModel
    """The model after learning (a copy when learned elsewhere)."""
    moved: bool
    """The model changed: its version went up."""


def learn(model: BaseModel, job: LearnJob) -> Learned:
    """Run ``job`` on ``model`` (changed in place; pass a copy to keep the original)."""
    return Learned(model, model.learn(job.sample, refresh=job.refresh))


LIFETIME_ORDERS = FEATURE_NAMES.index("lifetime_orders")


def fresh_names(model: BaseModel) -> dict[str, str]:
    """Segment names after an update: from the centres, each segment keeping its old name
    while that still fits (:func:`models.profiles.stable_names`)."""
    centres = dict(zip(model.ids, model.centres_scaled().tolist(), strict=True))
    # a segment "has bought" when its typical customer made at least half an order
    buyers = {sid: from_model_space(m)[LIFETIME_ORDERS] >= 0.5
              for sid, m in zip(model.ids, model.centres_model_space().tolist(), strict=True)}
    return stable_names(model.names, {sid: name_segment(z, buyers=buyers[sid])
                                      for sid, z in centres.items()}, centres, buyers)


@dataclass(frozen=True, slots=True)
class _Early:
    id: int
    sample: list[list[float]]


class UpdateSchedule:
    """Counts valid events, decides when the model learns and samples what it learns from.

    Samples mix this worker's customers with the samples other workers publish
    (:meth:`add_remote`), each worker in proportion to the customers it holds.
    """

    def __init__(self, config: SegmenterConfig) -> None:
        self.config = config
        self.trains = config.trains
        """This core updates the model (it holds the training lease); otherwise it assigns
        with snapshots it is given and publishes samples when :attr:`sample_due`."""
        self.warming = False
        """States of newly assigned partitions are being read from Redis: updates and
        samples wait, so they do not miss those customers."""
        self.sample_due = False
        self.force_refresh = False  # drift: the next update re-clusters
        self.remote: dict[str, tuple[int, list[list[float]]]] = {}
        """Other workers' samples of current customers: worker -> (population, rows)."""
        self._rng = random.Random(config.seed)
        self._since = 0  # valid events since the last update
        self.period_ms = config.update_every_days * DAY_MS
        """Event time between updates (0: by event count only)."""
        self._watermark = 0
        self.due_at = math.inf
        """Event time (epoch ms) at which an update falls due whatever the event count."""
        self._updates = 0
        self._next_id = 0
        self._early: _Early | None = None

    @property
    def due(self) -> bool:
        """An update is due (and may run now)."""
        return ((self._since >= self.config.update_every or self._timed)
                and not self.warming)

    @property
    def _timed(self) -> bool:
        return self._since > 0 and self._watermark >= self.due_at

    def left(self) -> int:
        """Valid events until the next update is due (while warming: never)."""
        if self.warming:
            return 1 << 62
        return max(1, self.config.update_every - self._since)

    def time_due(self, parsed: Sequence[tuple[object, object]], start: int) -> float:
        """Event time at which an update falls due; the stream's first event (the first
        :class:`Event` of ``parsed`` from ``start``) starts the clock."""
        if self.due_at == math.inf and self.period_ms > 0:
            first = next((ev.ts_ms for _, ev in islice(parsed, start, None)
                          if type(ev) is Event), None)
            if first is not None:
                self.due_at = first + self.period_ms
        return self.due_at

    def count(self, events: int, watermark: int = 0) -> None:
        """Valid events applied here, or (:meth:`add_remote`) on another worker, and the
        event-time watermark after them."""
        self._since += events
        self._watermark = max(self._watermark, watermark)

    def plan(self, cache: CustomerCache, model: BaseModel,
             changed: dict[str, Event]) -> LearnJob | None:
        """The update that is due now, or None when this core does not train (then its
        sample is due for publishing instead). Resets the count."""
        self._since = 0
        if self.period_ms > 0 and self._watermark:
            self.due_at = self._watermark + self.period_ms
        if not self.trains:
            self.sample_due = True
            self._early = None
            return None
        cfg = self.config
        self._updates += 1
        early, self._early = self._early, None
        refresh = (early is not None or not model.ready or self.force_refresh
                   or self._updates % cfg.refresh_every == 0)
        if early is not None:
            job_id, sample = early.id, early.sample
        else:
            job_id, sample = self._new_id(), self.sample(
                cache, cfg.refresh_sample if refresh else cfg.learn_sample)
        if (self._updates + 1) % cfg.refresh_every == 0 and not refresh:
            self._early = _Early(self._new_id(), self.sample(cache, cfg.refresh_sample))
        follow = self._early
        return LearnJob(job_id, sample, refresh, not model.ready, changed,
                        follow.sample if follow else None, follow.id if follow else None)

    def took(self, learned: Learned) -> None:
        """A job's outcome was taken."""
        if learned.moved:
            self.force_refresh = False

    def replaced(self) -> None:
        """The model was replaced by a snapshot: an early sample was planned on the old one."""
        self._early = None

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def sample(self, cache: CustomerCache, n: int) -> list[list[float]]:
        """About ``n`` current customers of all workers, each worker in proportion to the
        customers it holds (its own from ``cache``, the others' from :attr:`remote`)."""
        total = len(cache) + sum(pop for pop, _ in self.remote.values())
        if not self.remote or total == 0:
            return self.own_sample(cache, n)
        rows = self.own_sample(cache, max(1, round(n * len(cache) / total)))
        for _, (pop, theirs) in sorted(self.remote.items()):
            want = min(len(theirs), round(n * pop / total))
            rows.extend(self._rng.sample(theirs, want))
        return rows

    def own_sample(self, cache: CustomerCache, n: int) -> list[list[float]]:
        """Model-space vectors of up to ``n`` cached customers as of the watermark."""
        cfg = self.config
        return population_sample(cache.states.values(), n, cache.watermark,
                                 cfg.half_life_days * DAY_MS, cfg.active_days * DAY_MS,
                                 self._rng)

    def add_remote(self, worker: str, population: int, rows: list[list[float]],
                   events: int) -> None:
        """A sample published by another worker; its events count towards the next update."""
        self.remote[worker] = (population, rows)
        self._since += events

    def drop_remote(self, worker: str) -> None:
        """A worker whose sample went stale (it is gone)."""
        self.remote.pop(worker, None)

    def waiting(self, held: int) -> str:
        """Why no model exists yet (``held``: customers this worker holds), for people."""
        seen = held + sum(pop for pop, _ in self.remote.values())
        need = self.config.warmup - seen
        days = self.config.active_days
        why = (f"waiting for {need} more customers" if need > 0 else
               "learning the first model" + (f" (customers active in the last {days:g} days "
                                             "of event time count)" if days > 0 else ""))
        return (f"no model yet: {why}; {seen} seen, the first model needs "
                f"{self.config.warmup} (SEGMENTER_WARMUP)")
