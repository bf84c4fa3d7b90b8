"""Identity stitching, the pure part (issue #19 item 2; the design is the README's "Identity
stitching"): an anonymous visitor's profile folded into a customer's exactly once, the
bounded list of a customer's linked anonymous ids, and the control messages that carry a
link and a merge through the events topic, keyed by the id whose worker must act.

Merging is exact: a customer who received an anonymous visitor's snapshot has the features
they would have had from receiving the visitor's events themselves (counters decayed to the
later event time and added, lifetime counts added, seen event ids united), so a re-sent
event of the visitor is a duplicate for the customer too.

Examples
--------
>>> from models.events import Event
>>> from models.features import update
>>> day = 86_400_000
>>> anon, cust = CustomerState("a1"), CustomerState("c1")
>>> _ = update(anon, Event("e1", "a1", "purchase", 10 * day, 9, amount=30.0), 7 * day)
>>> _ = update(cust, Event("e2", "c1", "identify", 11 * day, 9), 7 * day)
>>> merge(cust, anon, "a1", "e2", 11 * day, 7 * day, day)
'new'
>>> cust.orders_total, cust.spend_total, cust.events_total, cust.first_ts == 10 * day
(1, 30.0, 2, True)
>>> merge(cust, anon, "a1", "e2", 11 * day, 7 * day, day)  # the same merge again
'duplicate'
>>> update(cust, Event("e1", "a1", "purchase", 10 * day, 9, amount=30.0), 7 * day)
'duplicate'
"""

from __future__ import annotations

from array import array
from typing import NamedTuple

import orjson

from models.events import event_id_hash
from models.features import MAX_CATEGORIES
from models.state import MAX_IDS, CustomerState

MAX_ANONYMOUS_IDS = 8
"""Default bound on the anonymous ids linked to one customer (devices, browsers)."""
LINK, MERGE, UNLINK = b"link", b"merge", b"unlink"
"""Values of the ``segmenter.control`` header of the identity control messages."""


class Link(NamedTuple):
    """Control message to the anonymous id's worker: ``anonymous_id`` is now
    ``customer_id`` (keyed by the anonymous id)."""

    customer_id: str
    anonymous_id: str
    event_id: str
    """The identify or alias event that linked them."""
    ts_ms: int
    """Its event time."""


class Merge(NamedTuple):
    """Control message to the customer's worker: fold this snapshot of the anonymous
    profile in, once (keyed by the customer id)."""

    link: Link
    snapshot: bytes
    """``CustomerState.to_bytes()`` of the anonymous profile when the link reached it
    (empty: the visitor had sent nothing)."""


class Unlink(NamedTuple):
    """Control message to the worker of an anonymous id dropped from its customer's linked
    ids (the bound): forget the link to ``customer_id``, if it is still that one (keyed by
    the anonymous id). Its later events start a profile of their own."""

    customer_id: str
    anonymous_id: str


def merge_id(anonymous_id: str, link_event_id: str) -> int:
    """The id a merge is admitted by in the customer's seen ids (like an event id).

    >>> merge_id("a1", "e2") == merge_id("a1", "e2") != merge_id("a2", "e2")
    True
    """
    return event_id_hash(f"merge\x00{anonymous_id}\x00{link_event_id}")


def _decayed(state: CustomerState, to_ms: int, half_life_ms: float) -> float:
    return 2.0 ** (-(to_ms - state.last_ts) / half_life_ms) if state.last_ts else 0.0


def merge_states(into: CustomerState, other: CustomerState, half_life_ms: float,
                 max_ids: int = MAX_IDS) -> None:
    """Fold ``other`` into ``into`` (no check that it happens once: see :func:`merge`)."""
    t = max(into.last_ts, other.last_ts)
    fa, fb = _decayed(into, t, half_life_ms), _decayed(other, t, half_life_ms)
    into.counters = [a * fa + b * fb for a, b in zip(into.counters, other.counters,
                                                     strict=True)]
    cats = {k: v * fa for k, v in into.categories.items()}
    for k, v in other.categories.items():
        cats[k] = cats.get(k, 0.0) + v * fb
    while len(cats) > MAX_CATEGORIES:
        del cats[min(cats, key=cats.__getitem__)]
    into.categories = cats
    newer, older = (other, into) if other.last_ts > into.last_ts else (into, other)
    for name in ("country", "region", "device", "channel"):
        value = getattr(newer, name)
        setattr(into, name, value if value is not None else getattr(older, name))
    for name in ("age", "income", "household", "gender"):  # the customer's own first
        if getattr(into, name) is None:
            setattr(into, name, getattr(other, name))
    firsts = [s.first_ts for s in (into, other) if s.first_ts]
    into.first_ts = min(firsts) if firsts else 0
    into.last_ts = t
    into.last_purchase_ts = max(into.last_purchase_ts, other.last_purchase_ts)
    into.orders_total += other.orders_total
    into.spend_total += other.spend_total
    into.events_total += other.events_total
    for etype, days in other.windows.items():
        mine = into.windows.setdefault(etype, {})
        for day, (count, amount) in days.items():
            cell = mine.setdefault(day, [0.0, 0.0])
            cell[0] += count
            cell[1] += amount
        into.windows[etype] = dict(sorted(mine.items()))  # oldest day first, as record keeps
    _unite_ids(into, other, max_ids)


def _unite_ids(into: CustomerState, other: CustomerState, max_ids: int) -> None:
    """Seen ids of both above the higher floor; over the bound, the oldest go and the floor
    rises past them (their events are late from now on: never applied twice)."""
    floor = max(into.floor_ms, other.floor_ms)
    pairs = sorted({(t, h) for s in (into, other) for h, t in zip(s.seen_ids, s.seen_ms,
                                                                  strict=True) if t >= floor})
    if len(pairs) > max_ids:
        dropped = pairs[len(pairs) - max_ids - 1][0]
        floor = dropped + 1
        pairs = [p for p in pairs if p[0] > dropped]
    into.floor_ms = floor
    into.seen_ids = array("Q", [h for _, h in pairs])
    into.seen_ms = array("q", [t for t, _ in pairs])


def merge(into: CustomerState, snapshot: CustomerState, anonymous_id: str,
          link_event_id: str, link_ts: int, half_life_ms: float, lateness_ms: int,
          max_ids: int = MAX_IDS) -> str:
    """Fold an anonymous profile's ``snapshot`` into the customer ``into`` exactly once:
    ``'new'`` (merged), or ``'duplicate'`` / ``'late'`` (changed nothing), as
    :meth:`CustomerState.admit` says for the merge's id at the link's event time."""
    outcome = into.admit(merge_id(anonymous_id, link_event_id), link_ts, lateness_ms, max_ids)
    if outcome == "new":
        merge_states(into, snapshot, half_life_ms, max_ids)
    return outcome


def add_link(links: dict[str, int], anonymous_id: str, ts_ms: int,
             bound: int = MAX_ANONYMOUS_IDS) -> list[str]:
    """Record that ``anonymous_id`` is linked (at event time ``ts_ms``) in a customer's
    ``links`` (id -> link time, oldest first); returns the ids dropped to stay within
    ``bound`` (their mirrors and link records are to be deleted).

    >>> links = {}
    >>> [add_link(links, f"a{i}", i, bound=2) for i in range(3)]
    [[], [], ['a0']]
    >>> add_link(links, "a1", 9, bound=2), list(links)  # linked again: kept, not moved
    ([], ['a1', 'a2'])
    """
    if anonymous_id not in links:
        links[anonymous_id] = ts_ms
    dropped = []
    while len(links) > bound:
        oldest = min(links, key=links.__getitem__)
        del links[oldest]
        dropped.append(oldest)
    return dropped


def encode_link(link: Link) -> bytes:
    """The value of a link control message (its key: the anonymous id)."""
    return orjson.dumps(link._asdict())


def encode_merge(merge_msg: Merge) -> bytes:
    """The value of a merge control message (its key: the customer id): the link as JSON,
    a NUL, the snapshot's bytes."""
    return encode_link(merge_msg.link) + b"\x00" + merge_msg.snapshot


def encode_unlink(unlink: Unlink) -> bytes:
    """The value of an unlink control message (its key: the anonymous id)."""
    return orjson.dumps(unlink._asdict())


def decode(control: bytes, value: bytes) -> Link | Merge | Unlink:
    """A link, merge or unlink control message's value (``control``: its header's value);
    raise ValueError when it is not one.

    >>> lk = Link("c1", "a1", "e2", 5)
    >>> decode(LINK, encode_link(lk)) == lk, decode(MERGE, encode_merge(Merge(lk, b"s\\x00")))
    (True, Merge(link=Link(customer_id='c1', anonymous_id='a1', event_id='e2', ts_ms=5), \
snapshot=b's\\x00'))
    """
    head, _, snapshot = value.partition(b"\x00") if control == MERGE else (value, b"", b"")
    try:
        obj = orjson.loads(head)
        if control == UNLINK:
            return Unlink(str(obj["customer_id"]), str(obj["anonymous_id"]))
        link = Link(str(obj["customer_id"]), str(obj["anonymous_id"]), str(obj["event_id"]),
                    int(obj["ts_ms"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a {control.decode(errors='replace')} message: {exc}") from None
    return Merge(link, snapshot) if control == MERGE else link


def rekeyed(value: bytes, customer_id: str) -> bytes:
    """An event sent with only an anonymous id, as the anonymous id's worker forwards it
    once the id is linked: the same event (same id) for ``customer_id``, in the format it
    came in (Segment / RudderStack: ``userId``), keyed by the customer id."""
    obj = orjson.loads(value)
    obj["userId" if "event_id" not in obj and "messageId" in obj else "customer_id"] = (
        customer_id)
    return orjson.dumps(obj)
