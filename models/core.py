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

from collections.abc import Sequence
from itertools import islice

from models.config import BatchResult, SegmenterConfig, make_model
from models.drift import DriftMonitor
from models.events import KNOWN_TYPES, Event, InvalidEvent, parse_event
from models.features import CustomerState, to_model_matrix, update, vector
from models.learning import Learning
from models.model import BaseModel
from models.profiles import customer_reason
from models.records import (
    CONTROL_HEADER,
    Assignment,
    DeadLetter,
    Erase,
    Record,
    RecordLike,
)
from models.rescoring import moves

__all__ = ["CONTROL_HEADER", "Assignment", "BatchResult", "DeadLetter", "Erase", "Record",
           "RecordLike", "Segmenter", "SegmenterConfig", "make_model"]


Parsed = list[tuple[RecordLike, Event | DeadLetter | Erase]]


class Segmenter(Learning):
    """Features, learning and assignment over batches; holds an LRU cache of states.

    The model and its update schedule are :class:`models.learning.Learning`'s."""

    def __init__(self, config: SegmenterConfig, model: BaseModel | None = None) -> None:
        super().__init__(config, model)
        self.drift = DriftMonitor()

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

