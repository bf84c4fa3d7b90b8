from __future__ import annotations

import json

import pytest

from models.events import (
    DEFAULT_MAX_FUTURE_S,
    MAX_EVENT_BYTES,
    InvalidEvent,
    latest_allowed_ms,
    parse_event,
)
from stream.parsing import Validator
from stream.settings import Settings


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
    (ev(timestamp=-1), "before the Unix epoch"),
    (ev(timestamp="1969-12-31T23:59:59+00:00"), "before the Unix epoch"),
    (ev(timestamp="1969-12-31T23:59:59.9999+00:00"), "before the Unix epoch"),  # not rounded
    (ev(timestamp="0001-01-01T00:00:00+05:00"), "before the Unix epoch"),
    (ev(timestamp=253_402_300_800_000), "after year 9999"),
    (ev(timestamp=2**62), "after year 9999"),
    (ev(timestamp=2**70), "ISO-8601 string or epoch"),  # beyond 64 bits: a float
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


@pytest.mark.parametrize(("timestamp", "ts_ms"), [
    (0, 0),
    (5, 5),
    ("1970-01-01T00:00:00Z", 0),
    ("1970-01-01T01:00:00+01:00", 0),
    ("1997-01-01T00:00:00+00:00", 852_076_800_000),
    ("1998-06-30T18:45:00-05:00", 899_250_300_000),
    (946_684_799_999, 946_684_799_999),  # 1999-12-31, refused before #16
    ("2150-01-01T00:00:00+00:00", 5_680_281_600_000),  # no clock bound given
])
def test_any_time_from_the_epoch_on_is_valid(timestamp: object, ts_ms: int) -> None:
    assert parse_event(ev(timestamp=timestamp), b"c1").ts_ms == ts_ms


def test_old_history_keeps_local_hour() -> None:
    e = parse_event(ev(timestamp="1997-03-04T21:15:00-08:00"), b"c1")
    assert e.local_hour == 21 and e.ts_ms == 857_538_900_000


NOW_MS = 1_800_000_000_000
LIMIT = latest_allowed_ms(NOW_MS, 86_400)


def test_future_bound_is_the_clock_plus_skew() -> None:
    assert LIMIT == NOW_MS + 86_400_000
    assert parse_event(ev(timestamp=LIMIT), b"c1", max_ts_ms=LIMIT).ts_ms == LIMIT
    assert parse_event(ev(timestamp=NOW_MS), b"c1", max_ts_ms=LIMIT).ts_ms == NOW_MS
    with pytest.raises(InvalidEvent) as info:
        parse_event(ev(timestamp=LIMIT + 1), b"c1", max_ts_ms=LIMIT)
    assert str(info.value) == (
        f"timestamp {LIMIT + 1} is ahead of the clock by more than SEGMENTER_MAX_FUTURE_S "
        "(after 2027-01-16T08:00:00Z)")


def test_future_bound_applies_to_iso_times() -> None:
    with pytest.raises(InvalidEvent, match="ahead of the clock"):
        parse_event(ev(timestamp="2027-01-16T09:00:01+01:00"), b"c1", max_ts_ms=LIMIT)
    e = parse_event(ev(timestamp="2027-01-16T09:00:00+01:00"), b"c1", max_ts_ms=LIMIT)
    assert e.ts_ms == LIMIT


def test_future_bound_is_capped_at_year_9999() -> None:
    assert latest_allowed_ms(NOW_MS, 1e12) == 253_402_300_799_999


def test_setting_default_matches_the_parser_default() -> None:
    s = Settings.from_env({})
    assert s.max_future_s == DEFAULT_MAX_FUTURE_S == 86_400
    assert Settings.from_env({"SEGMENTER_MAX_FUTURE_S": "60"}).max_future_s == 60


def test_validator_bounds_by_its_setting_inline() -> None:
    class Rec:
        def __init__(self, value: bytes) -> None:
            self.value, self.key, self.headers = value, b"c1", None

    validator = Validator(enabled=False, max_future_s=3600)
    now = validator.max_ts_ms() - 3_600_000
    recs = [Rec(ev(timestamp=now)), Rec(ev(timestamp=now + 3 * 3_600_000)), Rec(ev(timestamp=0))]
    out = validator.inline(recs)  # type: ignore[arg-type]
    assert not isinstance(out[0], str) and not isinstance(out[2], str)
    assert isinstance(out[1], str) and "ahead of the clock" in out[1]
