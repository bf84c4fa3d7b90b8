"""Hypothesis strategies over the event contract (SPEC §1): valid events, and messages that
break exactly one rule, each labelled with what the worker must do with it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
from hypothesis import strategies as st

from models.events import KNOWN_TYPES, MAX_EVENT_BYTES, MAX_TS_MS

ints = st.integers(-2**63, 2**63 - 1)  # what JSON encoders carry

# Redis-special and otherwise awkward characters that customer ids may contain.
AWKWARD = "{}[]*?:\\\"' \r\n\t\x00/#$%\u00e9\u4e2d\U0001f600"
ids = st.text(alphabet=st.characters(blacklist_categories=("Cs",)) | st.sampled_from(AWKWARD),
              min_size=1, max_size=128)
OFFSETS = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8)),
           timezone(timedelta(hours=14))]
# Valid: any time from the Unix epoch to a fixed past day (a real worker also refuses times
# more than SEGMENTER_MAX_FUTURE_S ahead of its clock).
LATEST_MS = 1_767_225_600_000  # 2026-01-01
timestamps = st.one_of(
    st.integers(0, LATEST_MS),
    st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2025, 12, 31),
                 timezones=st.sampled_from(OFFSETS)).map(lambda d: d.isoformat()),
)
amounts = st.floats(min_value=0, max_value=1e300, allow_nan=False) | st.integers(0, 2**53)
props = st.fixed_dictionaries({}, optional={
    "category": st.text(max_size=200), "device": st.sampled_from(["mobile", "desktop", "tv"]),
    "channel": st.text(max_size=40), "country": st.sampled_from(["DE", "fr", "US"]),
    "region": st.text(max_size=100), "currency": st.just("EUR"),
    "product_id": st.text(max_size=40), "extra": st.recursive(
        st.none() | st.booleans() | ints | st.text(max_size=20),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c,
                                                            max_size=3), max_leaves=10),
})
traits = st.fixed_dictionaries({}, optional={
    "age": st.integers(0, 130), "income": st.floats(0, 1e7), "gender": st.text(max_size=20),
    "household_size": st.integers(1, 50), "interests": st.lists(st.text(max_size=80),
                                                                max_size=40)})


@st.composite
def valid_events(draw: st.DrawFn) -> dict[str, Any]:
    etype = draw(st.sampled_from(sorted(KNOWN_TYPES) + ["newsletter_open"]))
    event: dict[str, Any] = {"event_id": draw(ids), "customer_id": draw(ids), "type": etype,
                             "timestamp": draw(timestamps), "properties": draw(props)}
    if etype == "purchase":
        event["properties"]["amount"] = draw(amounts)
    if etype == "identify":
        event["traits"] = draw(traits)
    return event


def _set(event: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = orjson.loads(orjson.dumps(event))
    *parents, last = path.split(".")
    node = out
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return out


# (what is wrong, how to break a valid event); every result violates SPEC §1
BREAKS: list[tuple[str, st.SearchStrategy[Any]]] = [
    ("wrong type", st.sampled_from(["event_id", "customer_id", "type", "timestamp"]).flatmap(
        lambda f: st.one_of(st.floats(), st.lists(ints, max_size=2), st.none(),
                            st.booleans()).map(lambda v: ("set", f, v)))),
    ("missing field", st.sampled_from(["event_id", "customer_id", "type", "timestamp"]).map(
        lambda f: ("drop", f, None))),
    ("too long id", st.sampled_from(["event_id", "customer_id"]).map(
        lambda f: ("set", f, "x" * 129))),
    ("empty id", st.sampled_from(["event_id", "customer_id"]).map(lambda f: ("set", f, ""))),
    ("bad amount", st.sampled_from([-0.01, -1e9, "12", None, True]).map(
        lambda v: ("purchase", "properties.amount", v))),
    ("non-finite amount", st.sampled_from(["NaN", "Infinity", "-Infinity"]).map(
        lambda v: ("raw_amount", "properties.amount", v))),
    ("pre-epoch, past-9999 or malformed time", st.one_of(
        st.integers(-2**62, -1), st.integers(MAX_TS_MS, 2**62),
        st.sampled_from(["1969-12-31T23:59:59Z", "1969-12-31T23:59:59.9999+00:00",
                         "2026-01-01T00:00:00", "yesterday", "0001-01-01T00:00:00+05:00"]),
    ).map(lambda v: ("set", "timestamp", v))),
    ("bad traits", st.sampled_from([{"age": -1}, {"age": 500}, {"interests": "x"},
                                    {"household_size": 0}, "old"]).map(
        lambda v: ("identify", "traits", v))),
    ("bad country", st.sampled_from(["DEU", "1", "", "é\u00e9"]).map(
        lambda v: ("set", "properties.country", v))),
    ("deep nesting", st.integers(1100, 5000).map(lambda n: ("nest", "properties.extra", n))),
    ("oversized", st.integers(MAX_EVENT_BYTES + 1, MAX_EVENT_BYTES + 5000).map(
        lambda n: ("pad", "properties.category", n))),
    ("invalid UTF-8", st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80"]).map(
        lambda b: ("bytes", "", b))),
    ("not an object", st.sampled_from([b"[]", b"1", b'"e"', b"null", b""]).map(
        lambda b: ("whole", "", b))),
    ("random bytes", st.binary(max_size=300).filter(lambda b: b.lstrip()[:1] != b"{").map(
        lambda b: ("whole", "", b))),
    ("key is not the customer id", st.sampled_from([b"", b"someone-else"]).map(
        lambda k: ("key", "", k))),
]


def apply_break(event: dict[str, Any], how: tuple[str, str, Any]) -> tuple[bytes, bytes]:
    """The broken message ``(key, value)``."""
    op, path, arg = how
    key = event["customer_id"].encode() if isinstance(event.get("customer_id"), str) else b"k"
    if op == "set":
        return key, orjson.dumps(_set(event, path, arg))
    if op == "drop":
        return key, orjson.dumps({k: v for k, v in event.items() if k != path})
    if op == "purchase":
        return key, orjson.dumps(_set({**event, "type": "purchase"}, path, arg))
    if op == "raw_amount":
        body = orjson.dumps(_set({**event, "type": "purchase"}, path, 0))
        return key, body.replace(b'"amount":0', b'"amount":' + arg.encode())
    if op == "identify":
        return key, orjson.dumps({**event, "type": "identify", "traits": arg})
    if op == "nest":
        body = orjson.dumps(_set(event, path, "NEST"))
        return key, body.replace(b'"NEST"', b"[" * arg + b"]" * arg)
    if op == "pad":
        return key, orjson.dumps(_set(event, path, "x" * arg))
    if op == "bytes":
        return key, orjson.dumps(event).replace(b'"type":"', b'"type":"' + arg, 1)
    if op == "whole":
        return key, arg
    if op == "key":
        return arg if arg != key else b"", orjson.dumps(event)
    raise ValueError(op)


@st.composite
def messages(draw: st.DrawFn) -> tuple[str, bytes, bytes]:
    """``(label, key, value)``: label ``valid`` or what is wrong with it."""
    event = draw(valid_events())
    if draw(st.booleans()):
        return "valid", event["customer_id"].encode(), orjson.dumps(event)
    name, how = draw(st.sampled_from(BREAKS))
    key, value = apply_break(event, draw(how))
    return name, key, value
