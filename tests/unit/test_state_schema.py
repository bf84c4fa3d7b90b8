"""The state-schema gate of a rolling upgrade: code reads every older schema of a customer
state, and refuses a newer one with a clear fatal error (``stream.errors``) instead of
crashing on the parse or guessing."""

from __future__ import annotations

import orjson
import pytest

from models.state import LEAN_SCHEMA, CustomerState, UnknownSchema
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
