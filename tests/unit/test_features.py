from __future__ import annotations

import math
import sys

import pytest

from models.events import Event, Traits
from models.features import (
    DAY_MS,
    FEATURE_NAMES,
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
    update(s, e(1, "page_view", 20), HL)
    update(s, e(2, "purchase", 10, amount=10.0), HL)
    assert s.last_ts == (T0 + 20) * DAY_MS
    assert s.counters[PURCHASES] == pytest.approx(0.5)


def test_duplicate_event_id_changes_nothing() -> None:
    s = CustomerState("c")
    assert update(s, e(1, "purchase", 1, amount=5.0), HL)
    before = s.to_bytes()
    assert not update(s, e(1, "purchase", 2, amount=5.0), HL)
    assert s.to_bytes() == before


def test_dedup_window_is_bounded() -> None:
    s = CustomerState("c")
    for i in range(100):
        update(s, e(i, "page_view", 1), HL, dedup_window=8)
    assert len(s.recent_ids) == 8


def test_dedup_matches_whole_ids_only() -> None:
    # The id search runs over the ids' raw bytes: an id whose bytes straddle two stored ids
    # is new, the stored ones are duplicates.
    s = CustomerState("c")
    first, second = 0x1111111122222222, 0x3333333344444444
    straddle = int.from_bytes((first.to_bytes(8, sys.byteorder) + second.to_bytes(
        8, sys.byteorder))[4:12], sys.byteorder)
    for i, h in enumerate((first, second)):
        assert update(s, e(i, "page_view", 1)._replace(id_hash=h), HL)
    assert update(s, e(5, "page_view", 1)._replace(id_hash=straddle), HL)
    assert not update(s, e(6, "page_view", 2)._replace(id_hash=second), HL)
    assert not update(s, e(7, "page_view", 2)._replace(id_hash=first), HL)
    assert list(s.recent_ids) == [first, second, straddle]


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
    assert v["age"] == 31 and v["income"] == 42000 and v["household_size"] == 2.5
    assert v["tenure_days"] == pytest.approx(3.0)
    # decaying to a later "now" lowers counts, not ratios
    later = dict(zip(FEATURE_NAMES, vector(s, HL, now_ms=(T0 + 13) * DAY_MS), strict=True))
    assert later["orders"] == pytest.approx(v["orders"] / 2)
    assert later["mobile_share"] == 1.0


def test_model_space_round_trip() -> None:
    raw = [float(i) for i in range(len(FEATURE_NAMES))]
    back = from_model_space(to_model_space(raw))
    assert all(math.isclose(a, b, abs_tol=1e-9) for a, b in zip(raw, back, strict=True))


def test_state_serialization_round_trip() -> None:
    s = CustomerState("c")
    update(s, e(1, "product_view", 1, category="books", country="DE"), HL)
    t = CustomerState.from_bytes("c", s.to_bytes())
    assert t.to_bytes() == s.to_bytes() and t.categories == {"books": 1.0}
