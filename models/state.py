"""What Segmenter keeps per customer, and how it is stored in Redis.

A :class:`CustomerState` holds the decayed counters and lifetime totals that
:mod:`models.features` folds events into, plus the customer's *seen ids*: what makes a re-sent
event change nothing, however old it is (:meth:`CustomerState.admit`).

Re-sent events, exactly
-----------------------
Each customer has an *allowed lateness* ``L`` (``SEGMENTER_ALLOWED_LATENESS_S``) and a
*floor*: the newest event time minus ``L``, raised further when the customer has more recent
ids than the bound (``SEGMENTER_DEDUP_MAX_IDS``; then the floor rises past the oldest ones
dropped). The state remembers the id of every applied event at or above the floor, so:

- an event at or above the floor is applied once: a second copy finds its id;
- an event below the floor is *late*: never applied (it goes to the dead-letter topic with
  reason ``late``), whether it is new or a copy of an event applied long ago (as in Kafka
  Streams' windowed de-duplication with a grace period).

Examples
--------
>>> s, day = CustomerState("c1"), 86_400_000
>>> s.admit(1, 10 * day, lateness_ms=day), s.admit(2, 12 * day, lateness_ms=day)
('new', 'new')
>>> s.last_ts = 12 * day  # as features.update sets it: the floor is now day 11
>>> s.admit(1, 10 * day, lateness_ms=day), s.admit(2, 12 * day, lateness_ms=day)
('late', 'duplicate')
>>> s.admit(3, 11 * day + 1000, lateness_ms=day)
'new'
>>> t = CustomerState.from_bytes("c1", s.to_bytes())
>>> t.admit(3, 11 * day + 1000, lateness_ms=day), t.to_bytes() == s.to_bytes()
('duplicate', True)
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from models.state_codec import (
    LEAN6_FRAME,
    LEAN_FRAME,
    LEAN_SCHEMA,
    N_COUNTERS,
    masked,
    pack_lean,
    unpack_lean,
    unpack_lean5,
)

__all__ = ["N_COUNTERS", "STATE_SCHEMA", "CustomerState", "UnknownSchema"]

STATE_SCHEMA = 4
"""Version of :meth:`CustomerState.to_bytes` (1: all JSON; 2: JSON head + packed numbers;
3: with event times of the seen ids and the lateness floor; 4: with the lifetime event count,
the last device and channel, for live traits). What Redis stores is the lean form
(schemas 5 and 6, :mod:`models.state_codec`)."""
_COUNTERS = struct.Struct(f"<{N_COUNTERS}d")
_BIG_ENDIAN = sys.byteorder == "big"  # packed numbers are little-endian everywhere
_ID = struct.Struct("=Q")  # one seen id as CustomerState.seen_ids holds it in memory
MAX_IDS = 128
"""Default bound on remembered ids per customer (``SEGMENTER_DEDUP_MAX_IDS``)."""


class UnknownSchema(ValueError):
    """A stored state this code cannot read; ``newer``: a newer version wrote it."""

    def __init__(self, customer_id: str, schema: Any) -> None:
        self.newer = isinstance(schema, int) and schema > LEAN_SCHEMA
        super().__init__(f"customer {customer_id!r}: state schema {schema} " + (
            f"was written by a newer Segmenter; this one reads schemas up to {LEAN_SCHEMA}"
            if self.newer else "is not one of a customer state"))


class CustomerState:
    """Everything Segmenter knows about one customer; mutable, owned by one partition."""

    __slots__ = (
        "customer_id", "partition", "offset", "first_ts", "last_ts", "last_purchase_ts",
        "counters", "orders_total", "spend_total", "categories", "country", "region",
        "age", "income", "household", "gender", "seen_ids", "seen_ms", "floor_ms",
        "events_total", "device", "channel", "windows",
        # current assignment, held in memory only (Redis holds it in the customer hash)
        "segment", "confidence", "model_version", "last_event_id", "rfm", "audiences",
    )

    def __init__(self, customer_id: str) -> None:
        self.customer_id = customer_id
        self.partition = -1  # source partition of the last applied event
        self.offset = -1  # its offset: a redelivered message at or below it is skipped
        self.first_ts = 0
        self.last_ts = 0
        self.last_purchase_ts = 0
        self.counters = [0.0] * N_COUNTERS
        self.orders_total = 0
        self.spend_total = 0.0
        self.categories: dict[str, float] = {}
        self.country: str | None = None
        self.region: str | None = None
        self.age: float | None = None
        self.income: float | None = None
        self.household: float | None = None
        self.gender: str | None = None
        self.seen_ids = array("Q")  # 64-bit hashes of applied event ids at or above the floor
        self.seen_ms = array("q")  # their event times, epoch ms (same order)
        self.floor_ms = 0  # events before this time are late (see the module docstring)
        self.events_total = 0  # lifetime count of applied events (exact: once per event id)
        self.device: str | None = None  # of the newest event (by event time) that gave one
        self.channel: str | None = None  # likewise
        # event type -> UTC day -> [count, sum of amounts] (models.windows); written after
        # the head's fields, only when not empty
        self.windows: dict[str, dict[int, list[float]]] = {}
        self.segment = ""
        self.confidence = 0.0
        self.model_version = 0
        self.last_event_id = ""
        self.rfm = ""  # the RFM segment name the customer hash holds
        self.audiences = ""  # the memberships (JSON array) the customer hash holds; "": unknown

    def admit(self, id_hash: int, ts_ms: int, lateness_ms: int,
              max_ids: int = MAX_IDS) -> str:
        """``'new'`` (the id is now remembered: apply the event), ``'duplicate'`` or
        ``'late'`` (change nothing). Call before the event changes anything else."""
        floor = self.last_ts - lateness_ms  # per event: plain comparisons, no max()
        if floor < self.floor_ms:
            floor = self.floor_ms
        if ts_ms < floor:
            return "late"
        ids = self.seen_ids
        if ids:
            # ``h in ids`` boxes every element as a Python int: searching the raw bytes is ~2x
            # faster (a match must start on an element boundary)
            raw, packed = ids.tobytes(), _ID.pack(id_hash)
            at = raw.find(packed)
            while at > 0 and at & 7:
                at = raw.find(packed, at + 1)
            if at >= 0:
                return "duplicate"
        ids.append(id_hash)
        times = self.seen_ms
        times.append(ts_ms)
        if len(ids) > max_ids:  # drop the oldest quarter at once: amortised
            self._raise_floor(max(floor, self._kth_oldest(len(ids) - max_ids * 3 // 4) + 1))
        elif times[0] < floor - (lateness_ms >> 2):
            self._drop_leading(floor)  # in steps of a quarter of the lateness: amortised
        return "new"

    def _kth_oldest(self, k: int) -> int:
        return sorted(self.seen_ms)[k - 1]

    def _drop_leading(self, floor: int) -> None:
        """Forget the ids before ``floor`` at the front (events arrive mostly in time order;
        one out of order stays until it reaches the front or the bound: harmless, as an
        event before the floor is refused before its id is looked up)."""
        times, k = self.seen_ms, 0
        for t in times:
            if t >= floor:
                break
            k += 1
        del times[:k]
        del self.seen_ids[:k]
        if floor > self.floor_ms:
            self.floor_ms = floor

    def _raise_floor(self, floor: int) -> None:
        """Forget every id older than ``floor`` (events before it are late from now on)."""
        self.floor_ms = max(self.floor_ms, floor)
        keep = [i for i, t in enumerate(self.seen_ms) if t >= self.floor_ms]
        self.seen_ids = array("Q", [self.seen_ids[i] for i in keep])
        self.seen_ms = array("q", [self.seen_ms[i] for i in keep])

    def to_bytes(self, lean: bool = False, top: Sequence[str] = ()) -> bytes:
        """Serialize exactly: a positional JSON head, a NUL, then the counters (float64),
        the seen ids (uint64) and their times (uint32 ms after the oldest, or int64 ms),
        packed little-endian (schema 4: in memory and in snapshots). ``lean``: the form
        Redis stores (:mod:`models.state_codec`), without what the customer hash holds
        beside it as traits, a category named in ``top`` (the favourite categories stored
        beside it) by its place there.

        >>> s = CustomerState("c1")
        >>> s.counters[0], s.seen_ids, s.seen_ms = 2.5, array("Q", [2**48 - 1]), array("q", [9])
        >>> t = CustomerState.from_bytes("c1", s.to_bytes())
        >>> t.counters[0], list(t.seen_ids), list(t.seen_ms), t.to_bytes() == s.to_bytes()
        (2.5, [281474976710655], [9], True)
        >>> s.seen_ids, s.seen_ms = array("Q", [1, 2]), array("q", [0, 10**11])  # years apart
        >>> CustomerState.from_bytes("c1", s.to_bytes()).seen_ms == s.seen_ms
        True
        """
        if lean:
            return pack_lean(self, top)
        times = self.seen_ms
        base = min(times) if times else 0
        # times as uint32 ms after the oldest (4 bytes less per id; exact) when they span
        # less than ~49 days, as they do with any sensible allowed lateness; else int64
        narrow = not times or max(times) - base < 1 << 32
        head = orjson.dumps([
            STATE_SCHEMA, self.partition, self.offset, self.first_ts, self.last_ts,
            self.last_purchase_ts, self.orders_total, self.spend_total, self.categories,
            self.country, self.region, self.age, self.income, self.household, self.gender,
            self.floor_ms, base if narrow else None, self.events_total, self.device,
            self.channel, *self._windows_json(),
        ])
        ids = self.seen_ids
        packed = array("I", [t - base for t in times]) if narrow else array("q", times)
        if _BIG_ENDIAN:
            ids = array("Q", ids)
            ids.byteswap()
            packed.byteswap()
        return b"%s\x00%s%s%s" % (head, _COUNTERS.pack(*self.counters), ids.tobytes(),
                                  packed.tobytes())

    def _windows_json(self) -> list[dict[str, list[list[float]]]]:
        """:attr:`windows` as one optional head element (none when empty)."""
        # integral numbers as integers, "1" not "1.0" (read back alike, also by older code),
        # where a float is exact: that also keeps them in JSON's int64 (a 1.8e19 amount)
        w = {t: [[d, *(int(x) if x % 1 == 0 and abs(x) < 2 ** 53 else x for x in nv)]
                 for d, nv in sorted(days.items())] for t, days in self.windows.items() if days}
        return [w] if w else []

    def _read_windows(self, doc: dict[str, list[list[float]]]) -> None:
        self.windows = {t: {int(d): [n, amt] for d, n, amt in rows} for t, rows in doc.items()}

    @classmethod
    def from_bytes(cls, customer_id: str, blob: bytes,
                   traits: Mapping[str, Any] | None = None) -> CustomerState:
        """Inverse of :meth:`to_bytes`; ``traits``: those stored beside a lean state (typed,
        by their trait names). Reads every schema: the lean ones (5, 6, 7) and schemas 1 and 2
        (whose ids carry no times: they are taken as of the customer's newest event);
        raises :class:`UnknownSchema` for a newer schema.

        >>> s = CustomerState("c1")
        >>> s.last_ts, s.orders_total, s.spend_total, s.device = 9, 2, 1.5, "tv"
        >>> s.counters[3], s.categories = 0.1 + 0.2, {"b": 1 / 3, "a": 2.5}
        >>> s.seen_ids, s.seen_ms, s.floor_ms = array("Q", [5]), array("q", [8]), 3
        >>> t = CustomerState.from_bytes("c1", s.to_bytes(lean=True, top=["a"]),
        ...     {"last_seen": 9, "orders": 2, "device": "tv", "categories": ["a"]})
        >>> t.to_bytes() == s.to_bytes(), len(s.to_bytes(lean=True)) < len(s.to_bytes())
        (True, True)
        """
        s = cls(customer_id)
        if blob[:4] in (LEAN_FRAME, LEAN6_FRAME):
            unpack_lean(s, blob, traits)
            return s
        if blob[:3] == b"[1,":
            data = orjson.loads(blob)
            (_, s.partition, s.offset, s.first_ts, s.last_ts, s.last_purchase_ts, s.counters,
             s.orders_total, s.spend_total, s.categories, s.country, s.region, s.age,
             s.income, s.household, s.gender, ids) = data
            s.seen_ids = masked(array("Q", ids))
            s.seen_ms = array("q", [s.last_ts] * len(ids))
            return s
        cut = blob.find(b"\x00")  # JSON never holds a raw NUL: the first one ends the head
        head: Any
        try:  # a newer schema may frame its head otherwise: refused below, not a crash
            head = orjson.loads(blob[:cut]) if cut > 0 else None
        except orjson.JSONDecodeError:
            head = None
        if not head or head[0] not in (2, 3, STATE_SCHEMA, 5):
            raise UnknownSchema(customer_id, head[0] if head else None)
        start = cut + 1 + _COUNTERS.size
        if head[0] == 5:  # the lean form before schema 6
            start, floor, base = unpack_lean5(s, head, blob, cut, traits)
            head = [5, *[None] * 14, floor, base]  # the packed part as schema 4
        else:
            (s.partition, s.offset, s.first_ts, s.last_ts, s.last_purchase_ts,
             s.orders_total, s.spend_total, s.categories, s.country, s.region, s.age,
             s.income, s.household, s.gender) = head[1:15]
            s.counters = list(_COUNTERS.unpack_from(blob, cut + 1))
        if head[0] == 2:
            s.seen_ids.frombytes(blob[start:])
            s.seen_ms = array("q", [s.last_ts] * len(s.seen_ids))
            if _BIG_ENDIAN:
                s.seen_ids.byteswap()
        else:
            s.floor_ms, base = head[15], head[16]
            if head[0] == 4:  # schema 3 knew no lifetime event count: it starts at 0
                s.events_total, s.device, s.channel = head[17:20]
                if len(head) > 20:
                    s._read_windows(head[20])
            n = (len(blob) - start) // (12 if base is not None else 16)
            s.seen_ids.frombytes(blob[start:start + 8 * n])
            times = array("I" if base is not None else "q", blob[start + 8 * n:])
            if _BIG_ENDIAN:
                s.seen_ids.byteswap()
                times.byteswap()
            s.seen_ms = array("q", [t + base for t in times]) if base is not None else \
                array("q", times)
        s.seen_ids = masked(s.seen_ids)
        return s
