"""The state-schema gate of a rolling upgrade: code reads every older schema of a customer
state, and refuses a newer one with a clear fatal error (``stream.errors``) instead of
crashing on the parse or guessing."""

from __future__ import annotations

import math
from array import array
from typing import Any

import orjson
import pytest

from models.state import LEAN_SCHEMA, CustomerState, UnknownSchema
from models.state_codec import TRAIT_FIELDS
from models.traits import decode, encode, traits
from stream.errors import FatalError, IncompatibleState, RetriableError
from stream.keys import decode_state


def _customer() -> CustomerState:
    s = CustomerState("c1")
    s.partition, s.offset, s.last_ts, s.orders_total, s.spend_total = 2, 7, 10**12, 1, 9.5
    s.windows = {"purchase": {11574: [1.0, 9.5]}}
    return s


def _newer(blob: bytes) -> bytes:
    """``blob`` as a next version might write it: schema LEAN_SCHEMA + 1, an extra field."""
    cut = blob.index(b"\x00")
    head = orjson.loads(blob[:cut])
    return orjson.dumps([LEAN_SCHEMA + 1, *head[1:], {"new": True}]) + blob[cut:]


def test_older_schemas_are_read() -> None:
    s = _customer()
    full = s.to_bytes()  # schema 4, as versions before the lean state stored it
    assert orjson.loads(full[:full.index(b"\x00")])[0] == 4
    back = decode_state("c1", full, {})
    assert (back.offset, back.orders_total, back.windows) == (7, 1, s.windows)
    lean = decode_state("c1", s.to_bytes(lean=True), {"last_seen": s.last_ts, "orders": 1})
    assert (lean.offset, lean.orders_total, lean.windows) == (7, 1, s.windows)
    legacy = orjson.dumps([1, 2, 7, 0, 5, 0, [0.0] * 16, 0, 0.0, {}, None, None, None,
                           None, None, None, [3]])  # schema 1: all JSON
    assert list(decode_state("c1", legacy, {}).seen_ids) == [3]


def test_a_newer_schema_is_refused_with_a_fatal_error_naming_it() -> None:
    blob = _newer(_customer().to_bytes(lean=True))
    with pytest.raises(UnknownSchema) as raised:
        CustomerState.from_bytes("c1", blob)
    assert raised.value.newer
    with pytest.raises(IncompatibleState) as fatal:
        decode_state("c1", blob, {})
    assert isinstance(fatal.value, FatalError) and not isinstance(fatal.value, RetriableError)
    msg = str(fatal.value)
    assert f"state schema {LEAN_SCHEMA + 1} was written by a newer Segmenter" in msg
    assert f"reads schemas up to {LEAN_SCHEMA}" in msg and "'c1'" in msg
    # a head this version cannot even parse is refused alike, not a crash
    with pytest.raises(UnknownSchema):
        CustomerState.from_bytes("c1", b"{\x01\x00rest")


def test_a_state_that_is_no_state_is_not_taken_for_a_newer_one() -> None:
    with pytest.raises(UnknownSchema) as raised:
        decode_state("c1", orjson.dumps(["x", 1]) + b"\x00", {})
    assert not raised.value.newer and not isinstance(raised.value, FatalError)


def test_window_sums_round_trip_whatever_their_size() -> None:
    # whole sums are stored as JSON integers where exact; one past int64 stays a float
    s = _customer()
    s.windows = {"purchase": {11574: [2.0, 1.8446744073709552e19], 11575: [1.0, 3.0]}}
    for lean in (False, True):
        back = decode_state("c1", s.to_bytes(lean=lean), {"last_seen": s.last_ts, "orders": 1})
        assert back.windows == s.windows


# A schema-5 state (the lean form before schema 6) exactly as version 869c250 wrote it for
# the customer of ``_rich()``, with the favourite categories ["books", "shoes"] in the hash.
LEAN5 = bytes.fromhex(
    "5b352c332c3132333435362c34302e332c5b312c2268617473222c305d2c38363430303030302c33363030"
    "3030302c3537372c7b227075726368617365223a5b5b32303435342c312c302e333030303030303030303030"
    "30303030345d2c5b32303435362c312c34305d5d2c22736561726368223a5b5b32303435392c332c305d5d"
    "7d5d00555555555555d53f00000000000000400000000000001a40000000000000e83f922449922449c23f00"
    "00000000000040ffffffffffffffff3930000000000000070000000001000000000000f8da360080ee3600")


def _rich() -> CustomerState:
    s, day, t0 = CustomerState("c1"), 86_400_000, 1_767_225_600_000
    s.partition, s.offset, s.first_ts = 3, 123456, t0
    s.last_ts, s.last_purchase_ts = t0 + 5 * day + 1234, t0 + 2 * day
    s.orders_total, s.spend_total, s.events_total = 2, 0.1 + 0.2 + 40, 7
    s.counters[0], s.counters[6], s.counters[9] = 1 / 3, 2.0, 6.5
    s.categories = {"shoes": 0.75, "hats": 1 / 7, "books": 2.0}
    s.country, s.device, s.channel = "DE", "mobile", "email"
    s.seen_ids = array("Q", [2**48 - 1, 12345, 2**40 + 7])  # 48-bit hashes (schema 7)
    s.seen_ms = array("q", [s.last_ts - 3_600_000, s.last_ts - 5000, s.last_ts])
    s.floor_ms = s.last_ts - day
    s.windows = {"purchase": {20454: [1.0, 0.30000000000000004], 20456: [1.0, 40.0]},
                 "search": {20459: [3.0, 0.0]}}
    return s


def _hash_traits(s: CustomerState) -> dict[str, Any]:
    return decode(encode(traits(s)) + b"\x1fcategories\x1f" + orjson.dumps(["books", "shoes"]))


def test_the_previous_lean_schema_reads_back_exactly() -> None:
    s = _rich()
    back = decode_state("c1", LEAN5, _hash_traits(s))
    assert back.to_bytes() == s.to_bytes()  # every field, exactly (schema 4 holds them all)
    assert back.to_bytes(lean=True, top=["books", "shoes"]) == \
        s.to_bytes(lean=True, top=["books", "shoes"])  # rewritten as schema 7


def test_schema_6_ids_read_back_as_the_48_bit_hashes_of_today() -> None:
    s = _rich()
    top = ["books", "shoes"]
    blob7 = s.to_bytes(lean=True, top=top)
    assert blob7[:4] == b"[7]\x00"
    n = len(s.seen_ids)
    # schema 6 kept each id in 8 bytes: the hash's upper 16 bits set, as its 64-bit hash had
    wide = array("Q", [i | 0xBEEF << 48 for i in s.seen_ids]).tobytes()
    blob6 = b"[6]\x00" + blob7[4:len(blob7) - 6 * n] + wide
    back = decode_state("c1", blob6, _hash_traits(s))
    assert list(back.seen_ids) == list(s.seen_ids)
    assert back.to_bytes() == s.to_bytes() and back.to_bytes(lean=True, top=top) == blob7


def _lean_round_trip(s: CustomerState, top: list[str]) -> CustomerState:
    blob = s.to_bytes(lean=True, top=top)
    t = {name: getattr(s, attr) for name, attr, _ in TRAIT_FIELDS} | {"categories": top}
    back = CustomerState.from_bytes(s.customer_id, blob, t)
    assert back.to_bytes() == s.to_bytes() and back.to_bytes(lean=True, top=top) == blob
    return back


def test_the_lean_schema_is_exact_for_any_values() -> None:
    s = _rich()
    assert len(s.to_bytes(lean=True, top=["books"])) < len(LEAN5)
    _lean_round_trip(s, ["books", "shoes"])
    _lean_round_trip(CustomerState("empty"), [])
    # numbers of every kind: whole, cents, neither, huge, negative, -0.0, infinite
    for x in (0.0, -0.0, 3.0, 19.99, -4.25, 0.1 + 0.2, 1e300, 2.0**60, -(2.0**53), math.inf,
              1 / 3, 123456789.01):
        s.spend_total = x
        s.windows = {"purchase": {20000: [2.0, x], 20001: [0.5, -x]}}
        back = _lean_round_trip(s, [])
        assert repr(back.spend_total) == repr(x)
        assert repr(back.windows["purchase"][20000][1]) == repr(float(x))
    # times out of order and years apart, floors above the last event, big positions,
    # categories and event types by name (not among the favourites or known types)
    s.seen_ms = array("q", [s.last_ts, s.last_ts - 10**11, s.last_ts + 5])
    s.floor_ms, s.partition, s.offset = s.last_ts + 1, 0, 2**62
    s.categories = {"ünïcödé " * 20: 1e-300, "books": 5.0}
    s.windows = {"a_new_type": {s.last_ts // 86_400_000 + 3: [1.0, 0.0]},
                 "page_view": {1: [1e6, 0.0]}}
    back = _lean_round_trip(s, ["books"])
    assert back.categories == s.categories and back.windows == s.windows
