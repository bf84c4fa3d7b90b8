"""Assignment: which segment each customer is in, after an event or as time passes.

:class:`Assigner` scores customers with the current model and turns the outcome into
:class:`~models.records.Assignment` values for the writer. Two ways in:

- :meth:`Assigner.assign`: customers whose events just changed their features. The nearest
  segment wins, without stickiness, so a customer's segment after an event depends only on
  their features and the model version, never on how events were batched.
- :meth:`Assigner.rescore`: a round-robin pass over customers *without* new events, as of
  the event-time watermark: they move when the model moved them clearly (reason
  ``model_update``) or when decay changed their nearest segment (reason ``time``); see
  :func:`models.rescoring.moves`.

Drift (:class:`models.drift.DriftMonitor`) watches the distances of every event assignment.

Examples
--------
>>> import numpy as np
>>> from models.cache import CustomerCache
>>> from models.config import BatchResult
>>> from models.kmeans import SegmentModel
>>> m = SegmentModel(min_segments=2, max_segments=2, warmup=2)
>>> m.ids, m._centres, m.version = ["s0", "s1"], np.array([[-1.0] * 18, [1e6] * 18]), 1
>>> cache = CustomerCache(10)
>>> cache.load({"c1": CustomerState("c1")})
>>> res = BatchResult()
>>> drifted = Assigner(cache, half_life_ms=1.0).assign(m, ["c1"], {}, res)
>>> [(a.customer_id, a.segment, a.reason) for a in res.assignments]  # no event: a model's
[('c1', 's0', 'model_update')]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from models.audiences import Audience
from models.cache import CustomerCache
from models.config import BatchResult
from models.drift import DriftMonitor
from models.events import Event
from models.features import to_model_matrix, vector
from models.model import STICKY, BaseModel
from models.profiles import customer_explanation
from models.records import Assignment
from models.rescoring import moves
from models.rfm import Quintiles, bucket_key
from models.state import CustomerState
from models.traits import encode, traits
from models.windows import ALWAYS, kept, memberships, moves_with_time

__all__ = ["Assigner"]


class Assigner:
    """Scores cached customers with a model; owns the re-scoring pass and drift detection.

    Parameters
    ----------
    cache
        The customers (shared with the rest of the core).
    half_life_ms
        Half-life of decayed features, event-time milliseconds.
    sticky
        Margin of :meth:`models.model.BaseModel.keep_current` when re-scoring customers
        without new events (:attr:`models.config.SegmenterConfig.sticky`).
    """

    def __init__(self, cache: CustomerCache, half_life_ms: float,
                 sticky: float = STICKY) -> None:
        self.cache = cache
        self.half_life_ms = half_life_ms
        self.sticky = sticky
        self.drift = DriftMonitor()
        self.sweep: list[str] = []  # customers left to re-score in this pass
        self.rfm = Quintiles()  # of the buyers of every worker, set by the caller
        self._rfm_pass: list[str] = []  # customers left to look at in this RFM pass
        self.audiences: tuple[Audience, ...] = ()  # the current definitions, set by the caller
        self.audiences_version = 0  # their version; 0: none known yet
        self._audience_pass: list[str] = []  # customers left to look at for memberships
        self.audience_pass_total = 0  # customers in the current pass
        self.window_keep: dict[str, int] = dict(ALWAYS)  # event type -> days of windows
        self._timed = False  # memberships may change without events (windows, RFM)

    def restart_pass(self) -> None:
        """Start a fresh re-scoring pass (the model or the population moved)."""
        self.sweep = []

    def assign(self, model: BaseModel, ids: list[str], changed: dict[str, Event],
               res: BatchResult) -> bool:
        """Score ``ids`` (those in ``changed`` because of an event); a new segment goes to
        ``res.assignments`` at once, an unchanged one waits for the next drain. True when
        drift was detected."""
        if not ids:
            return False
        states, hl = self.cache.states, self.half_life_ms
        z = model.scale(to_model_matrix([vector(states[c], hl) for c in ids]))
        labels, conf, dist = model.assign_with_distance(z)
        drifted = self.drift.observe(dist)
        if drifted:
            self.sweep = []
        centres, seg_ids, version = model.centres_scaled(), model.ids, model.version
        dirty = self.cache.dirty
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
                why = _explain(model, st, z[i], centres[label])
                res.assignments.append(self.assignment(
                    model, st, _reason(ev), why))
                dirty.pop(cid, None)
            else:
                dirty[cid] = None
        return drifted

    def rescore(self, model: BaseModel, budget: int) -> list[Assignment]:
        """Re-score up to ``budget`` cached customers as of the watermark, round-robin."""
        if not model.ready or budget <= 0:
            return []
        cache = self.cache
        if not self.sweep:
            self.sweep = [c for c, s in cache.states.items() if s.segment]
        batch, self.sweep = self.sweep[-budget:], self.sweep[:-budget]
        sts = [cache.states[c] for c in batch if c in cache.states and c not in cache.dirty]
        if not sts:
            return []
        hl = self.half_life_ms
        then = model.scale(to_model_matrix([vector(s, hl) for s in sts]))
        z = model.scale(to_model_matrix([vector(s, hl, cache.watermark) for s in sts]))
        centres, out = model.centres_scaled(), []
        for i, label, reason, conf in moves(model, then, z, [s.segment for s in sts],
                                             self.sticky):
            st = sts[i]
            st.segment, st.confidence = model.ids[label], conf
            st.model_version = model.version
            why = _explain(model, st, z[i], centres[label])
            out.append(self.assignment(model, st, reason, why))
        return out

    def rfm_moves(self, budget: int) -> list[tuple[str, int, int, str]]:
        """Cached buyers whose RFM segment moved with the population since it was written
        (as others buy, recency quintiles move on): ``(customer, orders, last purchase,
        new name)``; up to ``budget`` customers looked at, round-robin. Customers waiting
        for the next drain are left to it (it writes their name)."""
        cache, q = self.cache, self.rfm
        if not q.buyers or budget <= 0:
            return []
        if not self._rfm_pass:
            self._rfm_pass = list(cache.states)
        batch, self._rfm_pass = self._rfm_pass[-budget:], self._rfm_pass[:-budget]
        out = []
        for cid in batch:
            st = cache.states.get(cid)
            if st is None or not st.orders_total or cid in cache.dirty:
                continue
            name = q.name(bucket_key(st.last_purchase_ts, st.orders_total,
                                     round(st.spend_total, 2)))
            if name != st.rfm:
                st.rfm = name
                out.append((cid, st.orders_total, st.last_purchase_ts, name))
        return out

    def explain(self, model: BaseModel, states: list[CustomerState]) -> dict[str, str]:
        """Explanations of these customers' current segments, as of their last event."""
        known = [st for st in states if st.segment in model.ids]
        if not model.ready or not known:
            return {}
        z = model.scale(to_model_matrix([vector(st, self.half_life_ms) for st in known]))
        centres = model.centres_scaled()
        return {st.customer_id: _explain(model, st, z[i], centres[model.ids.index(st.segment)])
                for i, st in enumerate(known)}

    def full_writes(self, model: BaseModel, states: list[CustomerState],
                    again: set[str]) -> list[Assignment]:
        """What the writer stores for ``states`` at a drain, those in ``again`` explained
        again (the others keep the explanation stored with their segment)."""
        explained = self.explain(model, [st for st in states if st.customer_id in again])
        return [self.assignment(model, st, "event", explained.get(st.customer_id, ""))
                for st in states]

    def assignment(self, model: BaseModel, st: CustomerState, reason: str,
                   explanation: str) -> Assignment:
        """What the writer stores for ``st`` (its segment named by ``model``), with its
        live traits and RFM segment."""
        # revenue as the hash holds it (cents): the write script buckets the same value
        key = bucket_key(st.last_purchase_ts, st.orders_total, round(st.spend_total, 2)) \
            if st.orders_total else None
        st.rfm = self.rfm.name(key)
        t = traits(st)
        return Assignment(
            customer_id=st.customer_id,
            segment=st.segment,
            segment_name=model.names.get(st.segment, "") if st.segment else "",
            confidence=st.confidence,
            model_version=st.model_version,
            event_id=st.last_event_id if reason == "event" else "",
            event_ts=st.last_ts,
            reason=reason,
            explanation=explanation,
            partition=st.partition,
            offset=st.offset,
            state=st.to_bytes(lean=True, top=t.get("categories", ())),  # the traits: the rest
            traits=encode(t),
            rfm=st.rfm,
            **self.membership(st, t),
        )

    def membership(self, st: CustomerState, t: dict[str, Any]) -> dict[str, Any]:
        """The ``audiences`` fields of an :class:`Assignment` of ``st`` with traits ``t``:
        memberships as of the later of its last event and the watermark."""
        if not self.audiences_version:
            return {}
        st.audiences = orjson.dumps(memberships(self.audiences, st, t,
                                                self.cache.watermark)).decode()
        return {"audiences": st.audiences, "audiences_version": self.audiences_version}

    def set_audiences(self, version: int, audiences: Sequence[Audience]) -> None:
        """Evaluate memberships with these definitions (version ``version``) from now on.
        Every stored customer is evaluated with them by the caller's background pass over
        Redis (``stream.audience_pass``), cached or not; the pass over cached customers
        here (:meth:`audience_moves`) follows the passing of event time."""
        self.audiences, self.audiences_version = tuple(audiences), version
        self.window_keep = kept(audiences)
        self._timed = moves_with_time(audiences)
        self._audience_pass = []
        self.audience_pass_total = 0

    def members(self, st: CustomerState) -> str:
        """``st``'s memberships (a JSON array) as of the later of its last event and the
        watermark, with the current definitions."""
        return orjson.dumps(memberships(self.audiences, st, traits(st),
                                        self.cache.watermark)).decode()

    def audience_moves(self, model: BaseModel, budget: int) -> list[Assignment]:
        """Cached customers whose memberships changed without an event of theirs (a window
        passed in event time, the RFM segment moved): up to ``budget`` looked at,
        round-robin, written with reason ``time``. Customers waiting for the next drain
        are left to it."""
        cache = self.cache
        if not self.audiences_version or budget <= 0:
            return []
        if not self._audience_pass:
            if not self._timed:  # nothing moves with time under these definitions
                return []
            self._audience_pass = list(cache.states)
            self.audience_pass_total = len(self._audience_pass)
        batch = self._audience_pass[-budget:]
        self._audience_pass = self._audience_pass[:-budget]
        out = []
        for cid in batch:
            st = cache.states.get(cid)
            if st is None or cid in cache.dirty:
                continue
            if self.members(st) != st.audiences:
                out.append(self.assignment(model, st, "time", ""))
        return out

    @property
    def audience_pass_left(self) -> int:
        """Customers left in the current pass over memberships."""
        return len(self._audience_pass)


def _explain(model: BaseModel, st: CustomerState, z: Any, centre: Any) -> str:
    """``st``'s explanation of its segment (already set), from its scaled row ``z``."""
    return customer_explanation(z.tolist(), centre.tolist(), model.names.get(st.segment, ""),
                                buyer=st.orders_total > 0)


def _reason(ev: Event | None) -> str:
    """Why a customer in ``changed`` is assigned: its event, a merge of an anonymous
    profile into it (identity stitching), or none (the first model)."""
    if ev is None:
        return "model_update"
    return "merge" if ev.type == "merge" else "event"
