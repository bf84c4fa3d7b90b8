"""What the pure core takes in and gives out: consumed records, control messages, dead
letters and per-customer assignments (plain, immutable values); and the first step of the
data path, :func:`parse_records`, which sorts a batch of records into them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from models.events import Event, InvalidEvent, parse_event
from models.identity import LINK, MERGE, UNLINK, Link, Merge, Unlink, decode


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
    timestamp: int = -1
    """When the message reached Kafka (the record's timestamp), epoch ms; -1: unknown."""


class Erase(NamedTuple):
    """A control message: forget this customer everywhere (right to erasure)."""

    customer_id: str
    """The customer to forget."""


CONTROL_HEADER = "segmenter.control"
"""Header of control messages; with the value ``erase`` and no message value, the message
(keyed by the customer id) erases the customer, in order with that customer's events; with
``link``, ``merge`` or ``unlink``, identity stitching's steps (:mod:`models.stitching`)."""


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
    @property
    def timestamp(self) -> int: ...


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An invalid record and why it was refused."""

    record: RecordLike
    """The original record, bytes untouched."""
    reason: str
    """Human-readable reason (``late`` for an event behind the allowed lateness)."""
    detail: str = ""
    """More about the reason, when there is more to say."""


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
    """``event``, ``model_update`` or ``time``."""
    explanation: str
    """The customer's own traits that put them in the segment (set when the segment changes)."""
    partition: int
    """Partition of the last applied event (fencing)."""
    offset: int
    """Offset of the last applied event (fencing)."""
    state: bytes
    """Serialized :class:`CustomerState`."""
    traits: bytes = b""
    """Live traits as of the last event (:func:`models.traits.encode`); empty: not written."""
    rfm: str = ""
    """RFM segment name when written; empty without a purchase."""
    audiences: str = ""
    """JSON array of the ids of the audiences the customer is in (contract §2.3); empty:
    no definitions known yet, memberships left as they are."""
    audiences_version: int = 0
    """Version of the definitions ``audiences`` was evaluated with (a write made with older
    ones than Redis holds leaves memberships alone)."""


Parsed = list[tuple[RecordLike, "Event | DeadLetter | Erase | Link | Merge | Unlink"]]
"""A batch of records, each with its event, why it is invalid, or its control message."""


def _control(r: RecordLike) -> Erase | Link | Merge | Unlink | DeadLetter | None:
    """The control message ``r`` carries (erase, or identity stitching's link, merge and unlink:
    :mod:`models.identity`), a dead letter for a malformed one, or None for an event."""
    for name, value in r.headers:
        if name != CONTROL_HEADER:
            continue
        if value == b"erase" and r.value is None and r.key:
            return Erase(r.key.decode("utf-8", "replace"))
        if value in (LINK, MERGE, UNLINK) and r.value is not None:
            try:
                return decode(value, r.value)
            except ValueError as exc:
                return DeadLetter(r, str(exc))
    return None


def parse_records(records: Sequence[RecordLike],
                  validated: Sequence[Event | str] | None = None) -> Parsed:
    """Validate every record (:func:`models.events.parse_event`); or take ``validated``, what
    it gave for each record elsewhere (e.g. in a helper process): its event, or why it is
    invalid. Control messages become :class:`Erase`, :class:`~models.identity.Link` or
    :class:`~models.identity.Merge`.

    >>> parsed = parse_records([Record("events", 0, 7, b"c1", b"{}")])
    >>> parsed[0][1].reason
    "missing field 'event_id'"
    """
    out: Parsed = []
    for i, r in enumerate(records):
        if r.headers and (control := _control(r)) is not None:  # no headers: an event
            out.append((r, control))
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


def late_detail(customer_id: str, behind_ms: int, lateness_ms: int, max_ids: int) -> str:
    """Why an event was refused as late, for the dead-letter topic's detail header.

    >>> late_detail("c1", 90_000_000, 86_400_000, 128)[:48]
    "event time is 90000 s behind customer 'c1''s new"
    """
    return (f"event time is {behind_ms / 1000:.0f} s behind customer {customer_id!r}'s newest "
            f"event; the allowed lateness is {lateness_ms / 1000:.0f} s "
            "(SEGMENTER_ALLOWED_LATENESS_S), or the customer's remembered ids are bounded by "
            f"SEGMENTER_DEDUP_MAX_IDS={max_ids}")


def explanation_arg(a: Assignment) -> str:
    """The write scripts' explanation argument: ``=`` when it only repeats the segment's name
    (82% of simulated shoppers): the hash then holds none, and readers show the name.

    >>> a = Assignment._make([""] * len(Assignment._fields))
    >>> explanation_arg(a._replace(segment_name="Big spenders", explanation="big spenders"))
    '='
    >>> explanation_arg(a._replace(segment_name="Big spenders", explanation="young"))
    'young'
    """
    e = a.explanation
    return "=" if e and e == a.segment_name.lower() else e
