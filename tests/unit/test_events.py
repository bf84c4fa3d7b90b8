from __future__ import annotations

import json

import pytest

from models.events import MAX_EVENT_BYTES, InvalidEvent, parse_event


def ev(**over: object) -> bytes:
    base: dict[str, object] = {"event_id": "e1", "customer_id": "c1", "type": "page_view",
                               "timestamp": "2026-05-01T10:00:00+02:00"}
    base.update(over)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


def test_valid_event_fields() -> None:
    e = parse_event(ev(type="purchase", properties={"amount": 10, "country": "de",
                                                    "device": "Mobile"}), b"c1")
    assert (e.amount, e.country, e.device, e.local_hour) == (10.0, "DE", "mobile", 10)
    assert e.ts_ms == 1777622400000


def test_epoch_ms_timestamp_and_unicode_id() -> None:
    e = parse_event(ev(customer_id="ü/{x}\"'", timestamp=1777622400000), None)
    assert e.customer_id == "ü/{x}\"'" and e.ts_ms == 1777622400000


@pytest.mark.parametrize(("value", "reason"), [
    (b"{not json", "not valid UTF-8 JSON"),
    (b"\xff\xfe", "not valid UTF-8 JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (ev(event_id=...), "missing field 'event_id'"),
    (ev(event_id=""), "1 to 128 characters"),
    (ev(customer_id="x" * 129), "1 to 128 characters"),
    (ev(customer_id=5), "must be a string"),
    (ev(timestamp=...), "missing field 'timestamp'"),
    (ev(timestamp="yesterday"), "not ISO-8601"),
    (ev(timestamp="2026-05-01T10:00:00"), "no UTC offset"),
    (ev(timestamp=True), "ISO-8601 string or epoch"),
    (ev(timestamp=5), "outside years"),
    (ev(type="purchase"), "purchase without properties.amount"),
    (ev(type="purchase", properties={"amount": -1}), "finite number"),
    (ev(type="purchase", properties={"amount": "12"}), "must be a number"),
    (ev(type="purchase", properties={"amount": 1e400}), "not valid UTF-8 JSON"),  # Infinity
    (b'{"event_id":"e","customer_id":"c","type":"purchase","timestamp":1777622400000,'
     b'"properties":{"amount":NaN}}', "not valid UTF-8 JSON"),
    (ev(properties=[1]), "'properties' must be an object"),
    (ev(properties={"country": "Germany"}), "alpha-2"),
    (ev(properties={"device": 3}), "properties.device must be a string"),
    (ev(type="identify", traits={"age": "old"}), "traits.age must be a number"),
    (ev(type="identify", traits={"interests": "x"}), "list of strings"),
    (b" " * (MAX_EVENT_BYTES + 1), "over the 65536 limit"),
    (None, "tombstone"),
])
def test_invalid_events_have_reasons(value: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidEvent, match=None) as info:
        parse_event(value, b"c1")
    assert reason in str(info.value)


def test_key_must_match_customer() -> None:
    with pytest.raises(InvalidEvent, match="key does not equal"):
        parse_event(ev(), b"someone-else")


def test_unknown_type_is_valid() -> None:
    assert parse_event(ev(type="wishlist_add"), b"c1").type == "wishlist_add"
