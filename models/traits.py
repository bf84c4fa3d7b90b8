"""Live traits of a customer (contract §2.1): what a website and ``GET /customers/<id>`` read.

Traits are computed from the :class:`~models.state.CustomerState` alone, so they are exactly
as reproducible as the state: the same events, in any batching, after redeliveries and
crashes, give the same state (re-sends are refused by event id, redeliveries by offset) and
so the same traits.

The worker stores them, as of the customer's last event, as fields of the customer hash
(``seg:customer:{<id>}``), one per trait, named as in :data:`TRAIT_NAMES` (:func:`encode`),
next to the segment fields: a website reads segment, traits and RFM segment with one
``HGETALL`` (or ``HMGET`` of the fields it needs). Traits without a value are left out there
to save memory; :func:`for_api` gives the full shape with nulls, and the decayed ``activity``
(from the state) as of the stream's latest event time.

Examples
--------
>>> from models.events import Event
>>> from models.features import update
>>> day = 86_400_000
>>> s = CustomerState("c1")
>>> _ = update(s, Event("e1", "c1", "page_view", 10 * day, 9, category="shoes",
...                     device="mobile", channel="email", country="DE"), 30 * day)
>>> _ = update(s, Event("e2", "c1", "purchase", 12 * day, 9, amount=40.0), 30 * day)
>>> t = traits(s)
>>> t["orders"], t["revenue"], t["events"], t["last_purchase"] == 12 * day, t["categories"]
(1, 40.0, 2, True, ['shoes'])
>>> api = for_api(decode(encode(t)), s, 30 * day, 42 * day)
>>> api["activity"], api["age"], api["device"]  # a half-life after the last event: halved
(0.98, None, 'mobile')
"""

from __future__ import annotations

from typing import Any

import orjson

from models.features import EVENTS
from models.state import CustomerState

__all__ = ["TRAIT_NAMES", "decode", "encode", "for_api", "from_fields", "traits"]

FAVOURITES = 3
"""Favourite categories kept in the traits (the state weighs up to 8)."""
TRAIT_NAMES = (
    "orders", "revenue", "events", "first_seen", "last_seen", "last_purchase", "activity",
    "categories", "device", "channel", "country", "region", "age", "gender", "income",
    "household_size",
)
"""Every trait, in the order ``GET /customers/<id>`` gives them; also their field names in
the customer hash."""
_KINDS: dict[str, type] = {
    "orders": int, "events": int, "first_seen": int, "last_seen": int, "last_purchase": int,
    "revenue": float, "activity": float, "age": float, "income": float,
    "household_size": float, "categories": list,
}
MAX_VALUE = 64
"""Most bytes of one trait's value in the customer hash (Redis' ``hash-max-listpack-value``
default: longer values cost the compact encoding)."""
_SEP = b"\x1f"


def traits(state: CustomerState) -> dict[str, Any]:
    """The customer's traits as of their last event; unknown ones are left out.

    ``orders``, ``revenue`` and ``events`` are lifetime totals of applied events;
    ``first_seen``, ``last_seen`` and ``last_purchase`` event times (epoch ms);
    ``categories`` the favourite ones, most weight first (decayed). ``activity`` (the decayed
    count of events) is not stored: :func:`for_api` takes it from the state.
    """
    out: dict[str, Any] = {
        "orders": state.orders_total,
        "revenue": round(state.spend_total, 2),
        "events": state.events_total,
        "first_seen": state.first_ts,
        "last_seen": state.last_ts,
    }
    if state.last_purchase_ts:
        out["last_purchase"] = state.last_purchase_ts
    cats = state.categories
    if cats:
        # most weight first, ties broken by name (stable sorts: by name, then by weight):
        # the order must not depend on the order categories came in
        top = sorted(sorted(cats), key=cats.__getitem__, reverse=True)[:FAVOURITES]
        while len(orjson.dumps(top)) > MAX_VALUE:  # as stored: the lean state refers to it
            top.pop()
        out["categories"] = top
    for name, value in (("device", state.device), ("channel", state.channel),
                        ("country", state.country), ("region", state.region),
                        ("age", state.age), ("gender", state.gender),
                        ("income", state.income), ("household_size", state.household)):
        if value is not None:
            out[name] = value
    return out


def encode(t: dict[str, Any]) -> bytes:
    """The traits as customer hash fields: ``name``, ``value``, ... joined by the unit
    separator (``\\x1f``), for the write script to ``HSET``.

    One field per trait, each value at most :data:`MAX_VALUE` bytes, keeps the hash in Redis'
    compact listpack encoding (one JSON value longer than 64 bytes would turn the whole hash
    into a hash table: 4x the memory). Numbers as decimal text, lists as JSON; a string is
    cut to :data:`MAX_VALUE` bytes, a list loses its last items until it fits.

    >>> encode({"orders": 2, "revenue": 30.5, "categories": ["a", "b"], "country": "DE"})
    b'orders\\x1f2\\x1frevenue\\x1f30.5\\x1fcategories\\x1f["a","b"]\\x1fcountry\\x1fDE'
    >>> decode(encode({"orders": 2, "revenue": 30.5, "categories": ["a", "b"]}))
    {'orders': 2, 'revenue': 30.5, 'categories': ['a', 'b']}
    """
    parts: list[bytes] = []
    for name, value in t.items():
        kind = type(value)
        if kind is int:  # most traits: their decimal text as is
            parts += [name.encode(), b"%d" % value]
            continue
        if kind is float:  # "23", not "23.0": Redis keeps it as a small integer; others
            # in full (repr): read back exactly
            parts += [name.encode(), b"%d" % value if value.is_integer() and abs(value) < 1e15
                      else str(value).encode()]
            continue
        if kind is str:
            raw = value.encode()
            if len(raw) > MAX_VALUE:
                raw = raw[:MAX_VALUE].decode("utf-8", "ignore").encode()
        elif isinstance(value, list):
            items = list(value)
            raw = orjson.dumps(items)
            while len(raw) > MAX_VALUE and items:
                items.pop()
                raw = orjson.dumps(items)
        elif isinstance(value, str):
            raw = value.encode()[:MAX_VALUE].decode("utf-8", "ignore").encode()
        elif isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
            raw = b"%d" % value  # "23", not "23.0": Redis keeps it as a small integer
        else:
            raw = str(value).encode()  # floats in full (repr): read back exactly
        raw = raw.replace(_SEP, b" ")
        if raw and raw != b"[]":
            parts += [name.encode(), raw]
    return _SEP.join(parts)


def from_fields(doc: dict[str, str]) -> dict[str, Any]:
    """The traits among the fields of a customer hash, typed (those present)."""
    out: dict[str, Any] = {}
    for name in TRAIT_NAMES:
        raw = doc.get(name)
        if raw is None:
            continue
        kind = _KINDS.get(name, str)
        try:
            out[name] = orjson.loads(raw) if kind is list else kind(raw)
        except ValueError:
            out[name] = raw  # written by hand: given as it is
    return out


def decode(blob: bytes) -> dict[str, Any]:
    """Inverse of :func:`encode` (what the hash holds, typed)."""
    parts = blob.decode().split("\x1f") if blob else []
    return from_fields(dict(zip(parts[::2], parts[1::2], strict=True)))


def for_api(stored: dict[str, Any], state: CustomerState | None, half_life_ms: float,
            now_ms: int = 0) -> dict[str, Any]:
    """Traits as ``GET /customers/<id>`` gives them: every name of :data:`TRAIT_NAMES`
    (null when unknown, ``[]`` for lists), with ``activity``, the decayed count of events
    (halved every ``half_life_ms`` of event time) as of ``now_ms`` (the stream's latest
    event time) or ``last_seen`` if later, from the customer's ``state``."""
    out: dict[str, Any] = {name: stored.get(name) for name in TRAIT_NAMES}
    out["categories"] = out["categories"] or []
    if state is not None:
        age = max(0, now_ms - state.last_ts)
        out["activity"] = round(state.counters[EVENTS] * 2.0 ** (-age / half_life_ms), 2)
    return out
