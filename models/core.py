"""The pure, synchronous heart of the pipeline: a batch of raw Kafka records in,
dead letters, counts and per-customer assignments out. No I/O happens here.

The caller (``stream.pipeline``) does the I/O around it: :meth:`Segmenter.parse` tells
which customers' states must be loaded; :meth:`Segmenter.apply` updates features, learns,
assigns, and returns the new segments to write at once; :meth:`Segmenter.drain` returns the
other changed states, written once per commit interval.

Examples
--------
>>> seg = Segmenter(SegmenterConfig(n_segments=2, warmup=2, update_every=2))
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
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from models.events import KNOWN_TYPES, Event, InvalidEvent, parse_event
from models.features import DAY_MS, CustomerState, to_model_matrix, update, vector
from models.model import SegmentModel
from models.profiles import customer_reason, name_segment, stable_names


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed Kafka message."""

    topic: str
    """Source topic."""
    partition: int
    """Source partition."""
    offset: int
    """Offset in that partition."""
    key: bytes | None
    """Message key (the customer id, UTF-8)."""
    value: bytes | None
    """Message value (one JSON event)."""
    headers: tuple[tuple[str, bytes], ...] = ()
    """Message headers."""


class Erase(NamedTuple):
    """A control message: forget this customer everywhere (right to erasure)."""

    customer_id: str
    """The customer to forget."""


CONTROL_HEADER = "segmenter.control"
"""Header of control messages; with the value ``erase`` and no message value, the message
(keyed by the customer id) erases the customer, in order with that customer's events."""


class RecordLike(Protocol):
    """What the core reads of a record: :class:`Record`, or aiokafka's own records as they
    come (building a second object per message would cost more than the rest of parsing)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An invalid record and why it was refused."""

    record: RecordLike
    """The original record, bytes untouched."""
    reason: str
    """Human-readable reason."""


class Assignment(NamedTuple):  # a NamedTuple: one per changed customer per batch, built fast
    """A customer's new state and current segment, to be written atomically."""

    customer_id: str
    """The customer."""
    segment: str
    """Stable segment id (``s0``...)."""
    segment_name: str
    """Human-readable segment name."""
    confidence: float
    """How clearly the customer belongs, in [0, 1]."""
    model_version: int
    """Version of the model that assigned."""
    event_id: str
    """Last event applied (empty when re-assigned without a new event)."""
    event_ts: int
    """Event time of the last applied event, epoch ms."""
    reason: str
    """``event`` or ``model_update``."""
    why: str
    """The customer's own traits that put them in the segment (set when the segment changes)."""
    partition: int
    """Partition of the last applied event (fencing)."""
    offset: int
    """Offset of the last applied event (fencing)."""
    state: bytes
    """Serialized :class:`CustomerState`."""


@dataclass(frozen=True, slots=True)
class SegmenterConfig:
    """Tuning of the pure core (mirrors the ``SEGMENTER_*`` settings)."""

    n_segments: int = 6
    """Number of segments."""
    half_life_days: float = 30.0
    """Half-life of decayed features, in event-time days."""
    dedup_window: int = 32
    """Recent event ids remembered per customer for duplicate detection."""
    update_every: int = 5000
    """Valid events between model updates."""
    warmup: int = 500
    """Distinct customer vectors gathered before the model starts assigning."""
    learn_sample: int = 64
    """Current customers sampled and learned (``learn_one``) per model update."""
    refresh_every: int = 4
    """Every this many updates, refresh the centres over a larger sample of current customers."""
    refresh_sample: int = 2000
    """Current customers sampled for seeding and refreshes."""
    step: float = 0.02
    """River KMeans step size (its ``halflife``)."""
    seed: int = 42
    """Random seed."""
    cache_size: int = 200_000
    """Customer states kept in memory (the rest is re-read from Redis)."""


@dataclass(slots=True)
class BatchResult:
    """Everything :meth:`Segmenter.apply` decided for one batch."""

    assignments: list[Assignment] = field(default_factory=list)
    """Customers whose segment changed: write now (the rest wait for :meth:`Segmenter.drain`)."""
    dead: list[DeadLetter] = field(default_factory=list)
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    model_updated: bool = False
    event_ts: list[int] = field(default_factory=list)
    erased: list[str] = field(default_factory=list)
    """Customers to erase from Redis before the assignments are written."""


Parsed = list[tuple[RecordLike, Event | DeadLetter | Erase]]


class Segmenter:
    """Features, learning and assignment over batches; holds an LRU cache of states."""

    def __init__(self, config: SegmenterConfig, model: SegmentModel | None = None) -> None:
        self.config = config
        self.model = model or SegmentModel(
            n_segments=config.n_segments, step=config.step, warmup=config.warmup,
            learn_sample=config.learn_sample, seed=config.seed,
        )
        self.states: OrderedDict[str, CustomerState] = OrderedDict()
        self.half_life_ms = config.half_life_days * DAY_MS
        self._rng = random.Random(config.seed)
        self._since_update = 0
        self._updates = 0
        self._pending: set[str] = set()  # changed before the model was ready
        self.dirty: dict[str, None] = {}  # changed since the last drain (an ordered set)
        self.names: list[str] = []
        self.names = self._names()

    def _names(self) -> list[str]:
        if not self.model.ready:
            return []
        fresh = [name_segment(z) for z in self.model.centres_scaled().tolist()]
        return stable_names(self.names, fresh)

    def parse(self, records: Sequence[RecordLike]) -> Parsed:
        """Validate every record."""
        out: Parsed = []
        for r in records:
            if r.value is None and r.key and (CONTROL_HEADER, b"erase") in (r.headers or ()):
                out.append((r, Erase(r.key.decode("utf-8", "replace"))))
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

    def apply(self, parsed: Parsed, loaded: dict[str, CustomerState], now_ms: int) -> BatchResult:
        """Apply a parsed batch; ``loaded`` holds states read for :meth:`missing` ids."""
        res = BatchResult()
        for cid, known in loaded.items():
            self.states.setdefault(cid, known)
        changed: dict[str, Event] = {}
        cfg = self.config
        for rec, ev in parsed:
            if isinstance(ev, DeadLetter):
                res.dead.append(ev)
                res.counts["invalid", "dead_lettered"] += 1
                continue
            if isinstance(ev, Erase):
                self._erase(ev.customer_id, changed, res)
                continue
            label = ev.type if ev.type in KNOWN_TYPES else "other"
            if label == "other":
                res.counts[label, "ignored"] += 1
                continue
            st = self.states.get(ev.customer_id)
            if st is None:
                st = self.states[ev.customer_id] = CustomerState(ev.customer_id)
            else:
                self.states.move_to_end(ev.customer_id)
            if st.partition == rec.partition and rec.offset <= st.offset:
                res.counts[label, "duplicate"] += 1
                continue
            try:
                fresh = update(st, ev, self.half_life_ms, cfg.dedup_window)
            except Exception as exc:  # a bug must cost one event (dead-lettered), not the worker
                res.dead.append(DeadLetter(rec, f"processing failed: {exc!r}"))
                res.counts[label, "failed"] += 1
                continue
            if not fresh:  # re-sent id: nothing is written, not even the new offset
                res.counts[label, "duplicate"] += 1
                continue
            st.partition, st.offset = rec.partition, rec.offset
            res.counts[label, "processed"] += 1
            res.event_ts.append(ev.ts_ms)
            changed[ev.customer_id] = ev
            self._since_update += 1
            if self._since_update >= cfg.update_every:
                self._flush(changed, res, now_ms)
                changed = {}
        self._flush(changed, res, now_ms)
        return res

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

    def _flush(self, changed: dict[str, Event], res: BatchResult, now_ms: int) -> None:
        """Assign the changed customers with the current model, then update the model when an
        update is due; so every event is scored by the version current when it arrived,
        whatever the batching."""
        ids = list(changed)
        if self.model.ready:
            self._assign(ids, changed, res)
        else:
            self._pending.update(ids)
            self.dirty.update(dict.fromkeys(ids))
        if self._since_update < self.config.update_every:
            return
        was_ready = self.model.ready
        self._updates += 1
        refresh = not was_ready or self._updates % self.config.refresh_every == 0
        sample = self._population_sample(
            self.config.refresh_sample if refresh else self.config.learn_sample)
        if self.model.learn(sample, refresh=refresh):
            res.model_updated = True
            self.names = self._names()
            if not was_ready:
                pending = sorted(self._pending)
                self._pending.clear()
                self._assign(pending, changed, res)
        self._since_update = 0

    def _assign(self, ids: list[str], changed: dict[str, Event], res: BatchResult) -> None:
        """Score customers; a new segment is written at once, the rest at the next drain."""
        if not ids:
            return
        rows = [vector(self.states[c], self.half_life_ms) for c in ids]
        z = self.model.scale(to_model_matrix(rows))
        labels, conf = self.model.assign_scaled(z)
        centres = self.model.centres_scaled()
        version = self.model.version
        dirty = self.dirty
        for i, cid in enumerate(ids):
            st = self.states[cid]
            ev = changed.get(cid)
            if ev is not None:
                st.last_event_id = ev.event_id
            segment = f"s{labels[i]}"
            st.confidence = round(float(conf[i]), 4)
            st.model_version = version
            if segment != st.segment:
                st.segment = segment
                why = customer_reason(z[i].tolist(), centres[labels[i]].tolist())
                res.assignments.append(self._assignment(
                    st, "event" if ev is not None else "model_update", why))
                dirty.pop(cid, None)
            else:
                dirty[cid] = None

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

    def _population_sample(self, n: int) -> list[list[float]]:
        """Model-space vectors of up to ``n`` cached customers as they are now."""
        ids = list(self.states)
        if len(ids) > n:
            ids = self._rng.sample(ids, n)
        rows = [vector(self.states[c], self.half_life_ms) for c in ids]
        return to_model_matrix(rows).tolist() if rows else []

    def _assignment(self, st: CustomerState, reason: str, why: str) -> Assignment:
        return Assignment(
            customer_id=st.customer_id,
            segment=st.segment,
            segment_name=self.names[int(st.segment[1:])] if st.segment else "",
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
