"""The pure, synchronous heart of the pipeline: a batch of raw Kafka records in, dead
letters, counts and per-customer assignments out. No I/O happens here.

:class:`Segmenter` composes one object per job, in the order of the data path:

1. validate: :func:`models.records.parse_records` (rules in :mod:`models.events`);
2. features: :func:`models.features.update` on the :class:`~models.cache.CustomerCache`;
3. assign: :class:`~models.assignment.Assigner`;
4. learn: :class:`~models.learning.UpdateSchedule` plans a :class:`~models.learning.LearnJob`
   whenever an update is due, and takes back a :class:`~models.learning.Learned` model.

The caller (``stream.pipeline``) does the I/O: :meth:`Segmenter.missing` names the states
to read from Redis; :meth:`Segmenter.apply` runs a batch with updates inline (``stream.updates``
runs its steps with updates in a helper process); :meth:`drain` returns the other changed
states, written once per commit interval; :meth:`rescore` re-scores the others.

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
>>> out = seg.apply(parsed, {})
>>> len(out.dead), out.dead[0].reason[:22], out.model_updated
(1, 'value is not valid UTF', True)
>>> final = {a.customer_id: a.segment for a in out.assignments + seg.drain()}
>>> sorted(final), final["c0"] != final["c3"]
(['c0', 'c1', 'c2', 'c3'], True)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from itertools import islice

from models.algorithms import model_for
from models.assignment import Assigner
from models.cache import CustomerCache
from models.config import BatchResult, SegmenterConfig
from models.drift import DriftMonitor
from models.events import KNOWN_TYPES, Event
from models.features import DAY_MS, update
from models.identity import Link, Merge, Unlink
from models.learning import Learned, LearnJob, UpdateSchedule, fresh_names, learn
from models.model import BaseModel
from models.records import (
    CONTROL_HEADER,
    Assignment,
    DeadLetter,
    Erase,
    Parsed,
    Record,
    RecordLike,
    late_detail,
    parse_records,
)
from models.state import CustomerState
from models.stitcher import Stitcher
from models.windows import applied_event

__all__ = ["CONTROL_HEADER", "Assignment", "BatchResult", "DeadLetter", "Erase", "Parsed",
           "Record", "RecordLike", "Segmenter", "SegmenterConfig"]


class Segmenter:
    """Features, assignment and the model's update schedule over batches of records.

    Parameters
    ----------
    config
        Tuning (mirrors the ``SEGMENTER_*`` settings).
    model
        The model to start from (e.g. the latest snapshot); a new one by default.
    """

    def __init__(self, config: SegmenterConfig, model: BaseModel | None = None) -> None:
        self.config = config
        self.model = model or model_for(config)
        self.half_life_ms = config.half_life_days * DAY_MS
        self.cache = CustomerCache(config.cache_size)
        self.assigner = Assigner(self.cache, self.half_life_ms, config.sticky)
        self.schedule = UpdateSchedule(config)
        self.changed: dict[str, Event] = {}  # events applied, assigned by assign_changed
        self.stitch = Stitcher(self.cache)  # identity stitching (links, merges, forwards)

    # -- views of the parts, for callers that only read ---------------------------------------
    @property
    def states(self) -> dict[str, CustomerState]:
        """Cached customer states by id."""
        return self.cache.states

    @property
    def watermark(self) -> int:
        """The latest event time seen: "now" for time-based features."""
        return self.cache.watermark

    @property
    def drift(self) -> DriftMonitor:
        """Drift detection over event assignments."""
        return self.assigner.drift

    # -- validate -------------------------------------------------------------------------------
    def parse(self, records: Sequence[RecordLike],
              validated: Sequence[Event | str] | None = None) -> Parsed:
        """:func:`models.records.parse_records` (``validated``: done in a helper process)."""
        return parse_records(records, validated)

    def missing(self, parsed: Parsed) -> set[str]:
        """Customer ids whose state is not cached (the caller loads them from Redis)."""
        states, stitch = self.cache.states, self.stitch
        ids = {e.customer_id if type(e) is Event else stitch.target(e)  # type: ignore[arg-type]
               for _, e in parsed if (e.customer_id not in states if type(e) is Event
                                      else isinstance(e, (Link, Merge, Unlink)))}  # one pass
        return ids - states.keys() - stitch.links.keys() if stitch.links else ids

    # -- one batch ------------------------------------------------------------------------------
    def apply(self, parsed: Parsed, loaded: dict[str, CustomerState],
              res: BatchResult | None = None) -> BatchResult:
        """Apply a parsed batch with model updates inline; ``loaded`` holds the states read
        for :meth:`missing` ids. An empty batch runs an update that is due (e.g. from other
        workers' events)."""
        res = res if res is not None else BatchResult()
        self.cache.load(loaded)
        done = 0
        while True:
            done = self.consume(parsed, done, res)
            job = self.plan_update(self.assign_changed(res))
            if job is not None:
                started = time.perf_counter()
                self.take(job, learn(self.model, job), res)
                res.learn_seconds += time.perf_counter() - started
            if done >= len(parsed):
                return res

    def consume(self, parsed: Parsed, start: int, res: BatchResult) -> int:
        """Fold events from ``start`` into customer features until an update is due or the
        batch ends; returns where it stopped. The customers changed wait in
        :attr:`changed` for :meth:`assign_changed`."""
        cache, counts, event_ts, arrived = self.cache, res.counts, res.event_ts, res.arrived_ts
        explain = cache.renamed
        states, changed, schedule = cache.states, self.changed, self.schedule
        half_life, keep = self.half_life_ms, self.assigner.window_keep  # for audiences
        lateness, max_ids = self.config.allowed_lateness_ms, self.config.dedup_max_ids
        processed: dict[str, int] = dict.fromkeys(KNOWN_TYPES, 0)  # the common outcome
        watermark, applied, stop = cache.watermark, 0, len(parsed)
        left, due_at, timed = schedule.left(), schedule.time_due(parsed, start), False
        for i, (rec, ev) in enumerate(islice(parsed, start, None), start):
            if type(ev) is not Event:
                if isinstance(ev, DeadLetter):
                    res.dead.append(ev)
                    counts["invalid", "dead_lettered"] += 1
                elif isinstance(ev, Erase):
                    self._erase(ev.customer_id, res)
                elif isinstance(ev, (Link, Merge, Unlink)):  # identity stitching
                    self.stitch.control(rec, ev, res, changed, half_life, lateness, max_ids)
                continue
            if ev.anonymous_id is not None and self.stitch.event(rec, ev, res):
                continue  # forwarded to the customer the anonymous id is linked to
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
                outcome = update(st, ev, half_life, lateness, max_ids)
            except Exception as exc:  # a bug must cost one event (dead-lettered), not the worker
                res.dead.append(DeadLetter(rec, f"processing failed: {exc!r}"))
                counts[label, "failed"] += 1
                continue
            if outcome != "new":  # nothing is written, not even the new offset
                counts[label, outcome] += 1
                if outcome == "late":
                    res.dead.append(DeadLetter(rec, "late", late_detail(
                        cid, st.last_ts - ev.ts_ms, lateness, max_ids)))
                continue
            st.partition, st.offset = rec.partition, rec.offset
            applied_event(st, ev, keep)  # its id and windows, for audiences
            processed[label] += 1
            ts = ev.ts_ms
            event_ts.append(ts)
            arrived.append(rec.timestamp)
            if ts > watermark:
                watermark = ts
                timed = ts >= due_at
            changed[cid] = ev
            if label == "purchase":  # a buyer now, or no longer lapsing: explain again
                explain.add(cid)
            applied += 1
            if applied >= left or timed:
                stop = i + 1
                break
        cache.watermark = watermark
        schedule.count(applied, watermark)
        counts.update({(label, "processed"): n for label, n in processed.items() if n})
        return stop

    def assign_changed(self, res: BatchResult) -> dict[str, Event]:
        """Assign the customers in :attr:`changed` with the current model (or, before there
        is one, keep them for the first); returns them."""
        changed, self.changed = self.changed, {}
        if not changed:
            return changed
        if self.model.ready:
            if self.assigner.assign(self.model, list(changed), changed, res):
                self.schedule.force_refresh = True
        else:
            self.cache.pending.update(changed)
            self.cache.dirty.update(dict.fromkeys(changed))
        return changed

    def plan_update(self, assigned: dict[str, Event]) -> LearnJob | None:
        """The model update due now, if any; ``assigned``: what :meth:`assign_changed` just
        assigned (a first model assigns those as changed by their event)."""
        if not self.schedule.due:
            return None
        return self.schedule.plan(self.cache, self.model, assigned)

    def take(self, job: LearnJob, learned: Learned, res: BatchResult) -> None:
        """Adopt the outcome of ``job``: the learned model, its names and lifecycle events;
        a first model assigns everyone who waited for it."""
        self.model = learned.model
        self.schedule.took(learned)
        if not learned.moved:
            return
        res.model_updated = True
        self._rename(fresh_names(self.model))
        self.assigner.restart_pass()
        model = self.model
        scaled, units = model.centres_scaled(), model.centres_model_space()
        for e in model.take_lifecycle():
            res.lifecycle.append({**e, "name": model.names.get(e["segment"], "")})
            if e["segment"] in model.ids:
                i = model.ids.index(e["segment"])
                res.centres[e["segment"]] = (scaled[i].tolist(), units[i].tolist())
        if job.first:
            self._assign_pending(job.changed, res)

    def _erase(self, cid: str, res: BatchResult) -> None:
        """Forget a customer: what came before the erasure is never written."""
        self.cache.forget(cid)
        self.stitch.forget(cid)
        self.changed.pop(cid, None)
        res.assignments = [a for a in res.assignments if a.customer_id != cid]  # (rare)
        res.erased.append(cid)
        res.counts["erase", "processed"] += 1

    def _assign_pending(self, changed: dict[str, Event], res: BatchResult) -> None:
        pending = sorted(c for c in self.cache.pending if c in self.cache.states)
        self.cache.pending.clear()
        if pending and self.assigner.assign(self.model, pending, changed, res):
            self.schedule.force_refresh = True

    def _rename(self, names: dict[str, str]) -> None:
        """Give the model ``names`` (a renamed segment's customers get it at the next drain)."""
        before, self.model.names = self.model.names, names
        self.cache.mark_renamed({sid for sid, n in names.items() if before.get(sid, n) != n})

    def waiting(self) -> str | None:
        """Why nobody has a segment yet (no model), for people; None once a model exists."""
        return None if self.model.ready else self.schedule.waiting(len(self.cache))

    # -- between batches ------------------------------------------------------------------------
    def adopt(self, model: BaseModel) -> BatchResult | None:
        """Assign with ``model`` (a snapshot from the training worker) from now on; None if
        it is not newer. Customers who waited for a first model are assigned now; the others
        are re-scored by :meth:`rescore`, rate-limited."""
        if model.version <= self.model.version:
            return None
        before, self.model = self.model.names, model
        self.schedule.replaced()
        self.cache.mark_renamed(
            {sid for sid, n in model.names.items() if before.get(sid, n) != n})
        self.assigner.restart_pass()
        res = BatchResult(model_updated=True)
        self._assign_pending({}, res)
        return res

    def warm(self, states: list[CustomerState]) -> int:
        """Cache states read from Redis for newly assigned partitions; they are re-scored
        next. Returns how many were added."""
        added = self.cache.warm(states)
        self.assigner.sweep.extend(c for c in added if self.cache.states[c].segment)
        return len(added)

    def forget_partitions(self, partitions: set[int]) -> None:
        """Drop cached states of revoked partitions (another worker may change them)."""
        self.cache.forget_partitions(partitions)
        self.stitch.forget_partitions(partitions)
        for cid in [c for c, e in self.changed.items() if c not in self.cache.states]:
            del self.changed[cid]

    def rescore(self, budget: int) -> list[Assignment]:
        """Re-score up to ``budget`` customers without new events (:meth:`Assigner.rescore`)."""
        return self.assigner.rescore(self.model, budget)

    def drain(self) -> list[Assignment]:
        """Full writes for every customer changed since the last drain (their segment did
        not change, or it was written already; explained again if renamed or bought since);
        then shrink the cache to its bound. The caller writes these, then commits."""
        return self.assigner.full_writes(self.model, *self.cache.drain_explained())
