"""Issue #22 without servers: the checked-in OpenAPI document is the served one, token
settings rotate (several values) and stay out of reprs, settings that cannot work are refused
at start, and the per-client rate limit refills at its rate."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from stream import openapi
from stream.errors import SettingsError
from stream.guard import RateLimiter, token_matches
from stream.http_limits import public_field_names
from stream.settings import Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def test_checked_in_openapi_is_the_served_one() -> None:
    # the route serves orjson.dumps(openapi.document()); regenerate with
    # `python -m stream.openapi > docs/openapi.json`
    assert orjson.loads(DOC.read_bytes()) == openapi.document()
    served = orjson.loads(orjson.dumps(openapi.document()))
    assert served["openapi"].startswith("3.1")
    routes = {(m.upper(), p) for p, ops in served["paths"].items() for m in ops}
    assert {("GET", "/customers/{customer_id}/segment"), ("GET", "/customers/{customer_id}"),
            ("POST", "/customers/segments"), ("GET", "/customers/segments"),
            ("DELETE", "/customers/{customer_id}"), ("POST", "/events"),
            ("GET", "/openapi.json"), ("PUT", "/audiences/{audience_id}")} <= routes
    # personal data and writes say which token they need
    assert served["paths"]["/customers/{customer_id}"]["get"]["security"] == [
        {"readToken": []}, {"apiToken": []}]
    assert served["paths"]["/events"]["post"]["security"] == [{"writeKey": []}]
    assert "429" in served["paths"]["/events"]["post"]["responses"]


def test_every_token_setting_takes_several_values() -> None:
    for given, ok in (("Bearer new", True), ("Bearer old", True), ("Bearer other", False),
                      ("Bearer new,old", False), ("Bearer ", False), ("new", False)):
        assert token_matches(given, " new , old ,") is ok, given
    assert not token_matches("Bearer x", "")


def test_tokens_never_in_a_repr() -> None:
    s = Settings.from_env({"SEGMENTER_API_TOKEN": "admin-s3cret",
                           "SEGMENTER_READ_TOKEN": "read-s3cret",
                           "SEGMENTER_WRITE_KEY": "write-s3cret"})
    assert s.write_key == "write-s3cret"
    assert "s3cret" not in repr(s) and "s3cret" not in str(s)


@pytest.mark.parametrize(("env", "message"), [
    ({"SEGMENTER_PUBLIC_FIELDS": "segment,orders"}, "not orders"),
    ({"SEGMENTER_PUBLIC_FIELDS": "segment,revenue,age"}, "not age, revenue"),
    ({"SEGMENTER_EVENTS_BURST": "10"}, "at least 500"),
    ({"SEGMENTER_EVENTS_RATE": "-1"}, "must not be negative"),
    ({"SEGMENTER_MAX_BODY_BYTES": "100"}, "at least 1024"),
])
def test_settings_that_cannot_work_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_public_fields() -> None:
    assert public_field_names(Settings().public_fields) == (
        "segment", "segment_name", "model_version", "updated_at", "confidence")
    s = Settings.from_env({"SEGMENTER_PUBLIC_FIELDS": "segment, explanation"})
    assert public_field_names(s.public_fields) == ("segment", "explanation")
    assert Settings.from_env({"SEGMENTER_PUBLIC_FIELDS": ""}).public_fields == ""
    # no limit needs no burst
    assert Settings.from_env({"SEGMENTER_EVENTS_RATE": "0",
                              "SEGMENTER_EVENTS_BURST": "0"}).events_rate == 0


def test_rate_limit_per_client_refills_at_its_rate() -> None:
    clock = [100.0]
    rl = RateLimiter(rate=10, burst=500, now=lambda: clock[0])
    assert rl.take("a", 500) == 0.0
    assert rl.take("a", 20) == pytest.approx(2.0)  # 20 events at 10/s
    assert rl.take("b", 500) == 0.0  # another client has its own bucket
    clock[0] += 1.0
    assert rl.take("a", 10) == 0.0  # one second refilled ten
    assert rl.take("a", 1) == pytest.approx(0.1)
    clock[0] += 1000.0
    assert rl.take("a", 501) > 0  # never more than the burst at once
    assert rl.take("a", 500) == 0.0


def test_rate_limit_forgets_idle_clients_not_busy_ones() -> None:
    clock = [0.0]
    rl = RateLimiter(rate=1, burst=500, now=lambda: clock[0])
    rl.take("busy", 500)
    for n in range(10_001):
        rl.take(f"idle-{n}", 1)
    assert len(rl.buckets) <= 10_001
    assert rl.take("busy", 1) > 0  # still limited: its empty bucket was kept
