"""Audience definitions (contract §2.3): every kind of condition, every operator, and a bad
definition named precisely."""

from __future__ import annotations

import re
from typing import Any

import pytest

from models.audiences import Facts, InvalidAudience, parse_audience

TRAITS = {"orders": 3, "revenue": 150.75, "country": "AT", "categories": ["books", "music"],
          "device": "mobile", "age": 41.0}


def holds(where: dict[str, Any], facts: Facts | None = None) -> bool:
    return parse_audience("a1", {"name": "n", "where": where}).matches(
        facts or Facts(TRAITS, segment="s3", rfm="Champions"))


@pytest.mark.parametrize(("op", "value", "expected"), [
    ("=", 3, True), ("=", 2, False), ("!=", 2, True), ("<", 4, True), ("<", 3, False),
    ("<=", 3, True), (">", 2, True), (">", 3, False), (">=", 3, True),
    ("in", [1, 3], True), ("in", [1, 2], False), ("not_in", [1, 2], True),
    ("not_in", [3], False),
])
def test_trait_operators_on_a_number(op: str, value: Any, expected: bool) -> None:
    assert holds({"trait": "orders", "op": op, "value": value}) is expected


def test_trait_strings_lists_and_unknown_traits() -> None:
    assert holds({"trait": "country", "op": "in", "value": ["DE", "AT"]})
    assert holds({"trait": "categories", "op": "contains", "value": "music"})
    assert not holds({"trait": "categories", "op": "contains", "value": "toys"})
    assert holds({"trait": "device", "op": "contains", "value": "mob"})
    assert not holds({"trait": "country", "op": "<", "value": 5})  # no order across types
    # an unknown trait answers no condition, so its negation holds
    assert not holds({"trait": "income", "op": ">", "value": 0})
    assert not holds({"trait": "income", "op": "!=", "value": 0})
    assert holds({"not": {"trait": "income", "op": ">", "value": 0}})


def test_segment_rfm_and_logic() -> None:
    assert holds({"segment": "s3"}) and not holds({"segment": "s1"})
    assert holds({"rfm": "Champions"}) and not holds({"rfm": "Lost"})
    assert not holds({"rfm": "Champions"}, Facts(TRAITS))  # no purchase: no RFM segment
    yes, no = {"segment": "s3"}, {"segment": "s1"}
    assert holds({"all": [yes, yes]}) and not holds({"all": [yes, no]})
    assert holds({"any": [no, yes]}) and not holds({"any": [no, no]})
    assert holds({"not": no}) and not holds({"not": yes})


def test_event_windows_are_read_through_the_callers_window() -> None:
    asked: list[tuple[str, float, str]] = []

    def window(kind: str, days: float, agg: str) -> float:
        asked.append((kind, days, agg))
        return 2.0 if agg == "count" else 80.0

    a = parse_audience("a1", {"name": "n", "where": {"all": [
        {"event": "purchase", "within_days": 30, "count": {"op": ">=", "value": 2}},
        {"event": "purchase", "within_days": 7, "sum": {"op": ">", "value": 50}}]}})
    assert a.matches(Facts(TRAITS, window=window))
    assert asked == [("purchase", 30.0, "count"), ("purchase", 7.0, "sum")]
    assert a.windows == {("purchase", 30.0), ("purchase", 7.0)}
    assert not a.matches(Facts(TRAITS, window=lambda *_: 1.0))
    assert not a.matches(Facts(TRAITS))  # no window known: no event condition holds


@pytest.mark.parametrize(("body", "named"), [
    ([], "body:"),
    ({"name": "n"}, "where: missing"),
    ({"name": "", "where": {"segment": "s1"}}, "name:"),
    ({"name": "n", "where": {"segment": "s1"}, "size": 3}, "unknown field 'size'"),
    ({"name": "n", "where": {"trait": "shoe_size", "op": "=", "value": 1}},
     "where.trait: unknown trait 'shoe_size'"),
    ({"name": "n", "where": {"trait": "orders", "op": "in", "value": 3}},
     "where.value: 'in' needs a list"),
    ({"name": "n", "where": {"trait": "orders", "op": ">="}}, "where.value: missing"),
    ({"name": "n", "where": {"all": [{"segment": "s1"}, {"rfm": "Heroes"}]}},
     "where.all[1].rfm: must be one of"),
    ({"name": "n", "where": {"any": []}}, "where.any: must be a non-empty list"),
    ({"name": "n", "where": {"segment": "s1", "rfm": "Lost"}}, "exactly one of"),
    ({"name": "n", "where": {"event": "purchase", "within_days": 0,
                             "count": {"op": ">=", "value": 1}}}, "where.within_days"),
    ({"name": "n", "where": {"event": "purchase", "within_days": 366,
                             "count": {"op": ">=", "value": 1}}},
     "where.within_days: must be a number of days in (0, 365]"),
    ({"name": "n", "where": {"event": "purchased", "within_days": 30,
                             "count": {"op": ">=", "value": 1}}},
     "where.event: must be an event type, one of add_to_cart"),
    ({"name": "n", "where": {"event": "purchase", "within_days": 30}},
     "exactly one of count, sum"),
    ({"name": "n", "where": {"event": "purchase", "within_days": 30,
                             "sum": {"op": "in", "value": [1]}}}, "where.sum: compares"),
    ({"name": "n", "where": {"not": {"not": {"not": {"not": {"not": {"not": {"not": {
        "not": {"not": {"segment": "s1"}}}}}}}}}}}, "nested at most"),
])
def test_a_bad_definition_names_the_problem(body: Any, named: str) -> None:
    with pytest.raises(InvalidAudience, match=re.escape(named)):
        parse_audience("a1", body)


def test_ids_are_short_and_plain() -> None:
    with pytest.raises(InvalidAudience, match="id:"):
        parse_audience("a b", {"name": "n", "where": {"segment": "s1"}})
    assert parse_audience("a-repeat.de_1", {"name": "n", "where": {"segment": "s1"}}).id


# -- windows and memberships of a customer (models.windows), as the core keeps them --------

DAY = 86_400_000


def _core_with(audiences: dict[str, Any]) -> Any:
    from models.config import SegmenterConfig
    from models.core import Segmenter

    core = Segmenter(SegmenterConfig(warmup=1000, learn_sample=8))
    core.assigner.set_audiences(1, [parse_audience(k, v) for k, v in audiences.items()])
    return core


def _events(cid: str, days: list[tuple[int, str, float]]) -> list[Any]:
    import orjson

    from models.records import Record

    return [Record("events", 0, i, cid.encode(), orjson.dumps({
        "event_id": f"{cid}-{i}", "customer_id": cid, "type": t, "timestamp": d * DAY + i,
        "properties": {"amount": amt, "country": "AT"}})) for i, (d, t, amt) in enumerate(days)]


REPEAT = {"name": "repeat", "where": {"all": [
    {"event": "purchase", "within_days": 30, "count": {"op": ">=", "value": 2}},
    {"event": "purchase", "within_days": 30, "sum": {"op": ">", "value": 40}}]}}


def test_windows_count_per_day_only_what_audiences_read_and_survive_a_round_trip() -> None:
    from models.state import CustomerState

    core = _core_with({"a-repeat": REPEAT})
    core.apply(core.parse(_events("c1", [(100, "purchase", 25.0), (100, "page_view", 0.0),
                                         (110, "purchase", 20.0)])), {})
    st = core.states["c1"]
    assert st.windows == {"purchase": {100: [1.0, 25.0], 110: [1.0, 20.0]}}
    back = CustomerState.from_bytes("c1", st.to_bytes())
    assert back.windows == st.windows
    lean = CustomerState.from_bytes("c1", st.to_bytes(lean=True), {"last_seen": st.last_ts})
    assert lean.windows == st.windows
    # purchases are kept for the longest allowed window (365 days), then dropped as newer
    # events come
    from models.windows import record
    st.last_ts = 465 * DAY  # as features.update sets it before the event is recorded
    record(st, "purchase", 465 * DAY, 5.0, core.assigner.window_keep)
    assert st.windows["purchase"] == {110: [1.0, 20.0], 465: [1.0, 5.0]}
    st.last_ts = 475 * DAY
    record(st, "purchase", 475 * DAY, 5.0, core.assigner.window_keep)
    assert st.windows["purchase"] == {465: [1.0, 5.0], 475: [1.0, 5.0]}


def test_purchases_made_before_an_audience_existed_are_in_its_window() -> None:
    """A new "2+ purchases in 30 days" audience counts the purchases already seen; a type
    no audience named (page views) counts from the moment one names it, as GET /audiences
    says (``history``)."""
    from models.windows import history

    core = _core_with({})
    core.apply(core.parse(_events("c1", [(100, "purchase", 25.0), (101, "page_view", 0.0),
                                         (110, "purchase", 20.0)])), {})
    core.drain()
    st = core.states["c1"]
    assert st.windows == {"purchase": {100: [1.0, 25.0], 110: [1.0, 20.0]}}
    views = {"name": "viewer", "where": {"event": "page_view", "within_days": 30,
                                         "count": {"op": ">=", "value": 1}}}
    core.assigner.set_audiences(2, [parse_audience("a-repeat", REPEAT),
                                    parse_audience("a-view", views)])
    assert core.assigner.members(st) == '["a-repeat"]'  # the page view was not counted
    assert (history("purchase"), history("page_view")) == ("complete", "since_named")


def test_memberships_follow_events_and_event_time() -> None:
    core = _core_with({"a-repeat": REPEAT, "a-at": {"name": "AT", "where": {
        "trait": "country", "op": "=", "value": "AT"}}})
    core.apply(core.parse(_events("c1", [(100, "purchase", 25.0),
                                         (110, "purchase", 20.0)])), {})
    written = {a.customer_id: a for a in core.drain()}
    assert written["c1"].audiences == '["a-repeat","a-at"]'
    assert written["c1"].audiences_version == 1
    # nothing new: the time pass finds nothing to change
    assert core.assigner.audience_moves(core.model, 100) == []
    # event time moves on (another customer): the first purchase leaves the window on
    # day 130, and the membership ends without an event of c1's
    core.cache.watermark = 129 * DAY + 1
    assert core.assigner.audience_moves(core.model, 100) == []
    core.cache.watermark = 130 * DAY
    moved = core.assigner.audience_moves(core.model, 100)
    assert [(a.customer_id, a.audiences, a.reason) for a in moved] == [
        ("c1", '["a-at"]', "time")]
    # new definitions: stored customers are evaluated by the pass over Redis
    # (stream.audience_pass); the members it writes are these
    core.assigner.set_audiences(2, [parse_audience("a-at", {"name": "AT", "where": {
        "trait": "country", "op": "=", "value": "AT"}})])
    assert core.assigner.members(core.states["c1"]) == '["a-at"]'
    assert core.assigner.audience_pass_left == 0
    # trait conditions change only with events: no pass as time passes
    core.cache.watermark = 400 * DAY
    assert core.assigner.audience_moves(core.model, 100) == []
    assert core.assigner.audience_pass_left == 0


def test_no_definitions_leave_memberships_alone() -> None:
    from models.config import SegmenterConfig
    from models.core import Segmenter

    core = Segmenter(SegmenterConfig(warmup=1000))
    core.apply(core.parse(_events("c1", [(100, "purchase", 25.0)])), {})
    (a,) = core.drain()
    assert (a.audiences, a.audiences_version) == ("", 0)
    assert core.states["c1"].windows == {"purchase": {100: [1.0, 25.0]}}  # always kept
    assert core.assigner.audience_moves(core.model, 100) == []
