"""The pure, synchronous heart of the pipeline: a batch of raw Kafka records in,
dead letters, counts and per-customer assignments out. No I/O happens here.

The caller (``stream.pipeline``) does the I/O around it: :meth:`Segmenter.parse` tells
which customers' states must be loaded; :meth:`Segmenter.apply` updates features, learns,
assigns, and returns the new segments to write at once; :meth:`Segmenter.drain` returns the
other changed states, written once per commit interval; :meth:`Segmenter.rescore` re-scores
customers without new events as event time advances or the model changes.

Examples
--------
>>> seg = Segmenter(SegmenterConfig(min_segments=2, max_segments=2, warmup=2, update_every=2))
>>> recs = [Record("events", 0, i, f"c{i}".encode(),
...         ('{"event_id":"e%d","customer_id":"c%d","type":"purchase",'
...          '"timestamp":%d,"properties":{"amount":%d}}' % (i, i, 1767225600000 + i, i * 50)
...          ).encode()) for i in range(4)]
>>> recs.append(Record("events", 0, 4, b"x", b"not json"))
>>> parsed = seg.parse(recs)
>>> sorted(seg.missing(parsed))
['c0', 'c1', 'c2', 'c3']
>>> out = seg.apply(parsed, {}, now_ms=1767225700000)
>>> len(out.dead), out.dead[0].reason[:22], out.model_updated
(1, 'value is not valid UTF', True)
>>> final = {a.customer_id: a.segment for a in out.assignments + seg.drain()}
>>> sorted(final), final["c0"] != final["c3"]
(['c0', 'c1', 'c2', 'c3'], True)
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice

from models.config import BatchResult, SegmenterConfig, make_model
from models.drift import DriftMonitor
from models.events import KNOWN_TYPES, Event, InvalidEvent, parse_event
from models.features import DAY_MS, CustomerState, to_model_matrix, update, vector
from models.model import BaseModel
from models.profiles import customer_reason, name_segment, stable_names
from models.records import (
    CONTROL_HEADER,
    Assignment,
    DeadLetter,
    Erase,
    Record,
    RecordLike,
)
from models.rescoring import moves, population_sample

__all__ = ["CONTROL_HEADER", "Assignment", "BatchResult", "DeadLetter", "Erase", "Record",
           "RecordLike", "Segmenter", "SegmenterConfig", "make_model"]


Parsed = list[tuple[RecordLike, Event | DeadLetter | Erase]]


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
    on this update's outcome at once (:attr:`Segmenter.follow_sent`) and have a whole
    interval to run: a refresh costs ~20× a normal update."""


class Segmenter:
    """Features, learning and assignment over batches; holds an LRU cache of states."""

    def __init__(self, config: SegmenterConfig, model: BaseModel | None = None) -> None:
        self.config = config
        self.model = model or make_model(config)
        self.learner = config.learner
        self.states: OrderedDict[str, CustomerState] = OrderedDict()
        self.half_life_ms = config.half_life_days * DAY_MS
        self.watermark = 0  # the latest event time seen: "now" for time-based features
        self.drift = DriftMonitor()
        self.remote: dict[str, tuple[int, list[list[float]]]] = {}
        """Other workers' samples of current customers: worker -> (population, rows)."""
        self.sample_due = False  # a non-learner's turn to publish its sample
        self.warming = False
        """True while states of newly assigned partitions are being read from Redis
        (:meth:`warm`): model updates and samples wait, so they do not miss those customers."""
        self._rng = random.Random(config.seed)
        self._since_update = 0
        self._updates = 0
        self._force_refresh = False
        self.defer_learning = False
        """True: model updates run elsewhere (:attr:`job`, :meth:`deliver`), see :meth:`apply`."""
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
        self._sweep: list[str] = []
        self.dirty: dict[str, None] = {}  # changed since the last drain (an ordered set)

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
        re-scored by :meth:`rescore`, rate-limited."""
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

    def parse(self, records: Sequence[RecordLike],
              validated: Sequence[Event | str] | None = None) -> Parsed:
        """Validate every record; or take ``validated``, what :func:`parse_event` gave for
        each record elsewhere (e.g. in a helper process): its event, or why it is invalid."""
        out: Parsed = []
        for i, r in enumerate(records):
            if r.value is None and r.key and (CONTROL_HEADER, b"erase") in (r.headers or ()):
                out.append((r, Erase(r.key.decode("utf-8", "replace"))))
                continue
            if validated is not None:
                ev = validated[i]
                out.append((r, DeadLetter(r, ev) if isinstance(ev, str) else ev))
                continue
            try:
                out.append((r, parse_event(r.value, r.key)))
            except InvalidEvent as exc:
                out.append((r, DeadLetter(r, str(exc))))
        return out

    def missing(self, parsed: Parsed) -> set[str]:
        """Customer ids whose state is not cached (the caller loads them from Redis)."""
        return {
            e.customer_id for _, e in parsed
            if type(e) is Event and e.customer_id not in self.states
        }

    def forget_partitions(self, partitions: set[int]) -> None:
        """Drop cached states of revoked partitions (another worker may change them)."""
        for cid in [c for c, s in self.states.items() if s.partition in partitions]:
            del self.states[cid]
            self._pending.discard(cid)
            self.dirty.pop(cid, None)

    def warm(self, states: list[CustomerState]) -> int:
        """Cache states read from Redis for newly assigned partitions (a start, a restart,
        a failover), so that re-scoring and the learner's sample cover customers who send no
        new event. A cached state is newer and wins; the cache bound is kept (warmed states
        are the first evicted). Returns how many were added; they are re-scored next.
        """
        added = []
        for st in states:
            if len(self.states) >= self.config.cache_size:
                break
            if st.customer_id not in self.states:
                self.states[st.customer_id] = st
                self.states.move_to_end(st.customer_id, last=False)
                self.watermark = max(self.watermark, st.last_ts)
                added.append(st.customer_id)
        self._sweep.extend(c for c in added if self.states[c].segment)
        return len(added)

    def apply(self, parsed: Parsed, loaded: dict[str, CustomerState], now_ms: int,
              res: BatchResult | None = None, start: int = 0) -> BatchResult:
        """Apply a parsed batch; ``loaded`` holds states read for :meth:`missing` ids.

        With :attr:`defer_learning`, model updates run elsewhere while events go on: the
        batch stops (``res.resume`` is where to go on from) when a due update is ready to be
        started (:attr:`job`; set :attr:`job_sent`), and when its result is needed, i.e. at
        the next point where customers are assigned (:meth:`deliver` it). Call again with
        ``res`` and ``start=res.resume``. The outcome is exactly that of inline updates.
        Stopped at the batch's end (:attr:`carrying`), the batch may also end there: the
        customers changed since the last flush wait for the update with the next batch's,
        or until the caller settles (this method with no events, delivering when it stops).
        """
        res = res if res is not None else BatchResult()
        res.resume = None
        for cid, known in loaded.items():
            self.states.setdefault(cid, known)
            self.watermark = max(self.watermark, known.last_ts)
        changed: dict[str, Event] = {}
        cfg = self.config
        states, counts, event_ts = self.states, res.counts, res.event_ts
        half_life, window, every = self.half_life_ms, cfg.dedup_window, cfg.update_every
        processed: dict[str, int] = dict.fromkeys(KNOWN_TYPES, 0)  # the common outcome
        watermark = self.watermark
        if self.carrying and start < len(parsed):  # the update is still out: go on
            changed, self._carry = self._carry or {}, None
        elif self._carry is not None:  # the flush point this batch stopped at
            carried, self._carry = self._carry, None
            if self._point(carried, res):
                res.resume = start
                return res
        for i, (rec, ev) in enumerate(islice(parsed, start, None), start):
            if type(ev) is not Event:
                if isinstance(ev, DeadLetter):
                    res.dead.append(ev)
                    counts["invalid", "dead_lettered"] += 1
                elif isinstance(ev, Erase):
                    self._erase(ev.customer_id, changed, res)
                continue
            label = ev.type
            if label not in processed:
                counts["other", "ignored"] += 1
                continue
            cid = ev.customer_id
            st = states.get(cid)
            if st is None:
                st = states[cid] = CustomerState(cid)
            else:
                states.move_to_end(cid)
            if st.partition == rec.partition and rec.offset <= st.offset:
                counts[label, "duplicate"] += 1
                continue
            try:
                fresh = update(st, ev, half_life, window)
            except Exception as exc:  # a bug must cost one event (dead-lettered), not the worker
                res.dead.append(DeadLetter(rec, f"processing failed: {exc!r}"))
                counts[label, "failed"] += 1
                continue
            if not fresh:  # re-sent id: nothing is written, not even the new offset
                counts[label, "duplicate"] += 1
                continue
            st.partition, st.offset = rec.partition, rec.offset
            processed[label] += 1
            ts = ev.ts_ms
            event_ts.append(ts)
            if ts > watermark:
                watermark = ts
            changed[cid] = ev
            self._since_update += 1
            if self._since_update >= every:
                self.watermark = watermark  # a model update samples customers as of now
                stop = self._point(changed, res)
                changed = {}
                if stop:
                    res.resume = i + 1
                    break
        else:
            self.watermark = watermark
            if self._point(changed, res):
                res.resume = len(parsed)
        counts.update({(label, "processed"): n for label, n in processed.items() if n})
        return res

    @property
    def carrying(self) -> bool:
        """:meth:`apply` stopped at a batch's end, not at an update point, for the outcome of
        :attr:`job` (sent): the batch may end without it (see :meth:`apply`)."""
        return (self._carry is not None and self.job is not None and self.job_sent
                and self._learned is None and self._since_update < self.config.update_every)

    def deliver(self, model: BaseModel, moved: bool) -> None:
        """The outcome of :attr:`job`: ``model`` is a copy of :attr:`model` after
        ``learn(job.sample, refresh=job.refresh)`` returned ``moved``."""
        assert self.job is not None, "no model update is out"
        self._learned = (model, moved)

    def _point(self, changed: dict[str, Event], res: BatchResult) -> bool:
        """A flush point; True when :meth:`apply` must stop, for the caller to start
        :attr:`job` or to :meth:`deliver` it (then ``changed`` waits here)."""
        if not self._flush(changed, res, defer=self.defer_learning):
            self._carry = changed
            return True
        return self.job is not None and not self.job_sent

    def _erase(self, cid: str, changed: dict[str, Event], res: BatchResult) -> None:
        """Forget a customer: what came before the erasure is never written."""
        self.states.pop(cid, None)
        self.dirty.pop(cid, None)
        self._pending.discard(cid)
        changed.pop(cid, None)
        if any(a.customer_id == cid for a in res.assignments):
            res.assignments = [a for a in res.assignments if a.customer_id != cid]
        res.erased.append(cid)
        res.counts["erase", "processed"] += 1

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
        changed = job.changed
        if moved:
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
                self._assign(pending, changed, res)

    def _assign(self, ids: list[str], changed: dict[str, Event], res: BatchResult) -> None:
        """Score customers; a new segment is written at once, the rest at the next drain."""
        if not ids:
            return
        rows = [vector(self.states[c], self.half_life_ms) for c in ids]
        z = self.model.scale(to_model_matrix(rows))
        # The nearest segment, without stickiness: an event's outcome must depend only on the
        # customer's features and the model, not on how events were batched (stickiness
        # would make it depend on which intermediate segments a batching passed through).
        labels, conf, dist = self.model.assign_with_distance(z)
        if self.drift.observe(dist):
            self._force_refresh = True
            self._sweep = []
        centres = self.model.centres_scaled()
        seg_ids = self.model.ids
        version = self.model.version
        dirty, states = self.dirty, self.states
        for i, (cid, label, confidence) in enumerate(zip(ids, labels.tolist(),
                                                         conf.round(4).tolist(), strict=True)):
            st = states[cid]
            ev = changed.get(cid)
            if ev is not None:
                st.last_event_id = ev.event_id
            segment = seg_ids[label]
            st.confidence = confidence
            st.model_version = version
            if segment != st.segment:
                st.segment = segment
                why = customer_reason(z[i].tolist(), centres[label].tolist())
                res.assignments.append(self._assignment(
                    st, "event" if ev is not None else "model_update", why))
                dirty.pop(cid, None)
            else:
                dirty[cid] = None

    def rescore(self, budget: int) -> list[Assignment]:
        """Re-score up to ``budget`` cached customers as of the watermark, round-robin;
        the moves (reason ``model_update`` or ``time``) are :func:`models.rescoring.moves`."""
        if not self.model.ready or budget <= 0:
            return []
        if not self._sweep:
            self._sweep = [c for c, s in self.states.items() if s.segment]
        batch, self._sweep = self._sweep[-budget:], self._sweep[:-budget]
        sts = [self.states[c] for c in batch if c in self.states and c not in self.dirty]
        if not sts:
            return []
        hl, model = self.half_life_ms, self.model
        then = model.scale(to_model_matrix([vector(s, hl) for s in sts]))
        z = model.scale(to_model_matrix([vector(s, hl, self.watermark) for s in sts]))
        centres, out = model.centres_scaled(), []
        for i, label, reason, conf in moves(model, then, z, [s.segment for s in sts]):
            st = sts[i]
            st.segment, st.confidence = model.ids[label], conf
            st.model_version = model.version
            why = customer_reason(z[i].tolist(), centres[label].tolist())
            out.append(self._assignment(st, reason, why))
        return out

    def drain(self) -> list[Assignment]:
        """Full writes for every customer changed since the last drain (their segment did
        not change, or it was written already); then shrink the cache to its bound.

        The caller writes these, then commits: states reach Redis once per commit interval
        however many events a customer sends in between.
        """
        states = self.states
        out = [self._assignment(states[cid], "event", "") for cid in self.dirty]
        self.dirty.clear()
        self._evict()
        return out

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

    def _assignment(self, st: CustomerState, reason: str, why: str) -> Assignment:
        return Assignment(
            customer_id=st.customer_id,
            segment=st.segment,
            segment_name=self.names.get(st.segment, "") if st.segment else "",
            confidence=st.confidence,
            model_version=st.model_version,
            event_id=st.last_event_id if reason == "event" else "",
            event_ts=st.last_ts,
            reason=reason,
            why=why,
            partition=st.partition,
            offset=st.offset,
            state=st.to_bytes(),
        )

    def _evict(self) -> None:
        """Forget the least recently active customers beyond the bound (all are in Redis)."""
        excess = len(self.states) - self.config.cache_size
        for _ in range(max(0, excess)):
            cid, _ = self.states.popitem(last=False)
            self._pending.discard(cid)

