from __future__ import annotations

import math
import sys

import pytest

from models.events import Event, Traits
from models.features import (
    DAY_MS,
    FEATURE_NAMES,
    FEATURES,
    PURCHASES,
    SPEND,
    CustomerState,
    from_model_space,
    to_model_space,
    update,
    vector,
)

HL = 10 * DAY_MS
T0 = 20_000  # days since 1970: event times are real dates


def e(i: int, etype: str, day: float, **kw: object) -> Event:
    return Event(f"e{i}", "c", etype, int((T0 + day) * DAY_MS), 12, **kw)  # type: ignore[arg-type]


def test_decay_halves_per_half_life() -> None:
    s = CustomerState("c")
    update(s, e(1, "purchase", 0, amount=100.0), HL)
    update(s, e(2, "page_view", 10), HL)
    assert s.counters[PURCHASES] == pytest.approx(0.5)
    assert s.counters[SPEND] == pytest.approx(50.0)
    update(s, e(3, "page_view", 30), HL)
    assert s.counters[PURCHASES] == pytest.approx(0.125)
    assert s.orders_total == 1 and s.spend_total == 100.0  # lifetime totals never decay


def test_late_event_counts_decayed_and_keeps_clock() -> None:
    s = CustomerState("c")
    update(s, e(1, "page_view", 20), HL, lateness_ms=30 * DAY_MS)
    update(s, e(2, "purchase", 10, amount=10.0), HL, lateness_ms=30 * DAY_MS)
    assert s.last_ts == (T0 + 20) * DAY_MS
    assert s.counters[PURCHASES] == pytest.approx(0.5)


def test_duplicate_event_id_changes_nothing() -> None:
    s = CustomerState("c")
    assert update(s, e(1, "purchase", 1, amount=5.0), HL) == "new"
    before = s.to_bytes()
    assert update(s, e(1, "purchase", 2, amount=5.0), HL) == "duplicate"
    assert s.to_bytes() == before


def test_remembered_ids_are_bounded_and_the_floor_rises_with_them() -> None:
    s = CustomerState("c")
    for i in range(100):  # 100 events a second apart: all within the lateness
        assert update(s, e(i, "page_view", 1)._replace(ts_ms=T0 * DAY_MS + i * 1000), HL,
                      max_ids=8) == "new"
    assert len(s.seen_ids) <= 8
    before = s.to_bytes()
    # every event sent again changes nothing: the remembered are duplicates, the rest late
    outcomes = [update(s, e(i, "page_view", 1)._replace(ts_ms=T0 * DAY_MS + i * 1000), HL,
                       max_ids=8) for i in range(100)]
    assert outcomes == ["late"] * (100 - len(s.seen_ids)) + ["duplicate"] * len(s.seen_ids)
    assert s.to_bytes() == before


def test_a_resent_event_changes_nothing_whatever_its_age() -> None:
    s = CustomerState("c")
    days = [0.0, 0.5, 3.0, 3.2, 10.0, 10.1, 40.0]
    for i, d in enumerate(days):
        assert update(s, e(i, "purchase", d, amount=5.0), HL, lateness_ms=DAY_MS) == "new"
    before = s.to_bytes()
    outcomes = [update(s, e(i, "purchase", d, amount=5.0), HL, lateness_ms=DAY_MS)
                for i, d in enumerate(days)]
    assert outcomes == ["late"] * 6 + ["duplicate"]
    assert s.to_bytes() == before
    # a new event within the lateness applies; one behind it is late
    assert update(s, e(100, "page_view", 39.5), HL, lateness_ms=DAY_MS) == "new"
    assert update(s, e(101, "page_view", 38.5), HL, lateness_ms=DAY_MS) == "late"


def test_dedup_matches_whole_ids_only() -> None:
    # The id search runs over the ids' raw bytes: an id whose bytes straddle two stored ids
    # is new, the stored ones are duplicates.
    s = CustomerState("c")
    first, second = 0x1111111122222222, 0x3333333344444444
    straddle = int.from_bytes((first.to_bytes(8, sys.byteorder) + second.to_bytes(
        8, sys.byteorder))[4:12], sys.byteorder)
    for i, h in enumerate((first, second)):
        assert update(s, e(i, "page_view", 1)._replace(id_hash=h), HL) == "new"
    assert update(s, e(5, "page_view", 1)._replace(id_hash=straddle), HL) == "new"
    assert update(s, e(6, "page_view", 1)._replace(id_hash=second), HL) == "duplicate"
    assert update(s, e(7, "page_view", 1)._replace(id_hash=first), HL) == "duplicate"
    assert list(s.seen_ids) == [first, second, straddle]


def test_vector_units_and_defaults() -> None:
    s = CustomerState("c")
    update(s, e(1, "session_start", 0, device="mobile", channel="email"), HL)
    update(s, e(2, "purchase", 1, amount=40.0, device="mobile", channel="email"), HL)
    update(s, Event("e3", "c", "identify", DAY_MS * (T0 + 3), 20,
                    traits=Traits(age=31, income=42000)), HL)
    v = dict(zip(FEATURE_NAMES, vector(s, HL), strict=True))
    assert v["days_since_purchase"] == pytest.approx(2.0)
    assert v["avg_order_value"] == 40.0 and v["lifetime_orders"] == 1
    assert v["mobile_share"] == 1.0 and v["email_direct_share"] == 1.0
    assert v["age"] == 31 and v["income"] == 42000
    assert math.isnan(v["household_size"])  # never given: unknown, not a made-up 2.5
    assert v["tenure_days"] == pytest.approx(3.0)
    bare = CustomerState("b")
    update(bare, e(1, "purchase", 0, amount=10.0), HL)  # no device, channel or traits
    w = dict(zip(FEATURE_NAMES, vector(bare, HL), strict=True))
    unknown = {"mobile_share", "paid_social_share", "email_direct_share", "age", "income",
               "household_size"}
    assert {k for k, x in w.items() if math.isnan(x)} == unknown
    # decaying to a later "now" lowers counts, not ratios
    later = dict(zip(FEATURE_NAMES, vector(s, HL, now_ms=(T0 + 13) * DAY_MS), strict=True))
    assert later["orders"] == pytest.approx(v["orders"] / 2)
    assert later["mobile_share"] == 1.0


def test_model_space_round_trip() -> None:
    raw = [min(float(i), f.high) for i, f in enumerate(FEATURES)]
    back = from_model_space(to_model_space(raw))
    assert all(math.isclose(a, b, abs_tol=1e-9) for a, b in zip(raw, back, strict=True))


def test_centres_are_shown_within_each_features_range() -> None:
    # averaging in model space can leave a centre a hair outside (seen in the demo: -0.005
    # orders, 90.6 days since a purchase where 90 is the cap)
    out = dict(zip(FEATURE_NAMES, from_model_space(
        [v - 0.01 if f.log else (f.high + 0.6 if f.high < math.inf else -0.2)
         for v, f in zip([0.0] * len(FEATURES), FEATURES, strict=True)]), strict=True))
    assert out["orders"] == 0.0 and out["spend"] == 0.0
    assert out["days_since_purchase"] == 90.0 and out["tenure_days"] == 180.0
    assert out["mobile_share"] == 1.0 and out["age"] == 0.0


def test_state_serialization_round_trip() -> None:
    s = CustomerState("c")
    update(s, e(1, "product_view", 1, category="books", country="DE"), HL)
    t = CustomerState.from_bytes("c", s.to_bytes())
    assert t.to_bytes() == s.to_bytes() and t.categories == {"books": 1.0}
