"""Identity stitching, the protocol's steps as pure functions (the README's "Identity
stitching", steps 1-4): what each worker does with what it consumes, and what it produces.
The worker runs them in its batches and produces what they return before it
commits (:mod:`models.stitcher` in the core, ``stream.stitch_io`` around it);
:mod:`models.identity` merges the states.

Every step is idempotent, so at-least-once delivery of the control messages (a worker killed
between producing and committing redelivers) gives exactly-once merges:

- :func:`on_event` (C's worker): an ``identify``/``alias`` with both ids gives a
  :class:`~models.identity.Link` to produce keyed by the anonymous id (again when it is
  redelivered or re-sent);
- :func:`on_link` (A's worker): the first link freezes A's state as the snapshot in a
  :class:`LinkRecord`; the same link again gives the same :class:`~models.identity.Merge`
  (same bytes); a newer link to another customer moves A's later events, not its history;
- :func:`on_merge` (C's worker): the snapshot folded in once (its merge id is admitted like
  an event id), the link kept within the bound;
- :func:`forward` (A's worker): an event with only A, once A is linked, re-keyed to C.

Examples
--------
>>> from models.events import Event
>>> ident = Event("e9", "c1", "identify", 5_000, 9, anonymous_id="a1")
>>> link = on_event(ident)
>>> record, out = on_link(link, None, None)
>>> out == on_link(link, None, record)[1], record.customer_id  # redelivered: the same merge
(True, 'c1')
"""

from __future__ import annotations

from typing import NamedTuple

import orjson

from models.events import Event
from models.identity import MAX_ANONYMOUS_IDS, Link, Merge, add_link, merge, rekeyed
from models.state import MAX_IDS, CustomerState

LINKING_TYPES = frozenset(("identify", "alias"))
"""Event types that link their ``anonymous_id`` to their ``customer_id``."""


class LinkRecord(NamedTuple):
    """What A's worker keeps for a linked anonymous id (in place of its state)."""

    customer_id: str
    """Where A's events go now."""
    event_id: str
    """The link that set it."""
    ts_ms: int
    """That link's event time (a link only replaces an older one)."""
    snapshot: bytes
    """A's state when the link arrived (empty after a re-link: history is merged once)."""


def on_event(ev: Event) -> Link | None:
    """The link to produce (keyed by ``anonymous_id``) for an applied, duplicate or re-sent
    event of C, if it links an anonymous id."""
    anon = ev.anonymous_id
    if anon is None or anon == ev.customer_id or ev.type not in LINKING_TYPES:
        return None
    return Link(ev.customer_id, anon, ev.event_id, ev.ts_ms)


def on_link(link: Link, state: CustomerState | None, record: LinkRecord | None
            ) -> tuple[LinkRecord | None, Merge | None]:
    """A's worker takes ``link`` (in order with A's events); ``state``: A's profile, if
    any; ``record``: A's link record, if linked. Returns the record to keep (write it,
    fenced, in place of A's state) and the merge to produce keyed by the customer."""
    if record is None:
        snapshot = state.to_bytes() if state is not None and state.events_total else b""
        record = LinkRecord(link.customer_id, link.event_id, link.ts_ms, snapshot)
    elif record.customer_id == link.customer_id:
        if record.event_id != link.event_id:  # linked again (another identify): known
            return record, None
    elif link.ts_ms > record.ts_ms:  # a newer login elsewhere: later events go there
        record = LinkRecord(link.customer_id, link.event_id, link.ts_ms, b"")
    else:
        return record, None  # an older link (redelivered late): the newer one stands
    return record, Merge(Link(record.customer_id, link.anonymous_id, record.event_id,
                              record.ts_ms), record.snapshot)


def on_merge(customer: CustomerState, msg: Merge, links: dict[str, int], half_life_ms: float,
             lateness_ms: int, max_ids: int = MAX_IDS, bound: int = MAX_ANONYMOUS_IDS
             ) -> tuple[str, list[str]]:
    """C's worker takes ``msg``: the outcome (``new``: merged, assign and write C and a
    change message for A; ``duplicate``/``late``: nothing changed) and the linked ids
    dropped from ``links`` to stay within ``bound`` (their mirrors are to be deleted and an
    unlink produced to each)."""
    link = msg.link
    snapshot = (CustomerState.from_bytes(link.anonymous_id, msg.snapshot) if msg.snapshot
                else CustomerState(link.anonymous_id))
    outcome = merge(customer, snapshot, link.anonymous_id, link.event_id, link.ts_ms,
                    half_life_ms, lateness_ms, max_ids)
    if outcome != "new":
        return outcome, []
    return outcome, add_link(links, link.anonymous_id, link.ts_ms, bound)


def forward(value: bytes, record: LinkRecord | None) -> tuple[bytes, bytes] | None:
    """For an event with only a linked anonymous id: ``(key, value)`` to produce, the same
    event for the customer; None when the id is not linked (apply it to A)."""
    if record is None:
        return None
    return record.customer_id.encode(), rekeyed(value, record.customer_id)


RECORD_FRAME = b"\x01LNK"
"""How a stored link record begins (a state never does: see :meth:`CustomerState.to_bytes`)."""


def encode_record(record: LinkRecord) -> bytes:
    """A link record as stored in place of the anonymous id's state (after the
    ``partition:offset:`` head): the frame, its fields as JSON, a NUL, the snapshot.

    >>> rec = LinkRecord("c1", "e9", 5, b"snapshot")
    >>> decode_record(encode_record(rec)) == rec, decode_record(b"[4,...]")
    (True, None)
    """
    return (RECORD_FRAME + orjson.dumps([record.customer_id, record.event_id, record.ts_ms])
            + b"\x00" + record.snapshot)


def decode_record(blob: bytes) -> LinkRecord | None:
    """The link record ``blob`` holds, or None when it is a state."""
    if not blob.startswith(RECORD_FRAME):
        return None
    head, _, snapshot = blob[len(RECORD_FRAME):].partition(b"\x00")
    cid, event_id, ts_ms = orjson.loads(head)
    return LinkRecord(str(cid), str(event_id), int(ts_ms), snapshot)


Links = dict[str, tuple[int, LinkRecord]]
"""Link records read from Redis, by anonymous id: the partition written from, the record."""


def take_links(stored: list[tuple[str, bytes]], links: Links) -> list[tuple[str, bytes]]:
    """Of stored ``(id, b"partition:offset:" + blob)`` pairs, the states; the link records
    go to ``links``.

    >>> links: Links = {}
    >>> rec = b"3:9:" + encode_record(LinkRecord("c1", "e9", 5, b""))
    >>> take_links([("a1", rec), ("c2", b"3:7:[4,...]")], links), links["a1"][0]
    ([('c2', b'3:7:[4,...]')], 3)
    """
    states = []
    for cid, raw in stored:
        p, _, blob = raw.split(b":", 2)
        record = decode_record(blob)
        if record is None:
            states.append((cid, raw))
        else:
            links[cid] = (int(p), record)
    return states
