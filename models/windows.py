"""Event windows and audience memberships of one customer (contract §2.3). Pure.

An audience's event condition ("``purchase`` at least twice within 30 days") reads counts
and sums of the customer's events of one type over the last N days of event time. The state
keeps them per UTC day (:attr:`CustomerState.windows`: type -> day -> ``[count, sum]``),
only for the event types the current audiences name and only as many days back as the
longest of their windows: nothing at all while no audience has an event condition.

Granularity: a day. "Within N days" counts the events of the last N UTC days up to "now"
(today included), so a purchase on day d counts until the end of day d + N - 1 and its
membership ends on day d + N, with or without new events. "Now" is the later of the
customer's last event and the stream's latest event time (the watermark).

Examples
--------
>>> from models.audiences import parse_audience
>>> a = parse_audience("a1", {"name": "n", "where": {"event": "purchase", "within_days": 30,
...                                                    "count": {"op": ">=", "value": 1}}})
>>> keep = tracked([a])
>>> keep
{'purchase': 30}
>>> s = CustomerState("c1")
>>> record(s, "purchase", 10 * DAY_MS, 25.0, keep)
>>> record(s, "page_view", 10 * DAY_MS, 0.0, keep)  # not tracked: costs nothing
>>> s.windows
{'purchase': {10: [1.0, 25.0]}}
>>> memberships([a], s, {}, 39 * DAY_MS), memberships([a], s, {}, 40 * DAY_MS)
(['a1'], [])
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from models.audiences import Audience, Facts, Window
from models.events import Event
from models.state import CustomerState

__all__ = ["DAY_MS", "applied_event", "memberships", "moves_with_time", "record", "tracked",
           "window"]

DAY_MS = 86_400_000


def tracked(audiences: Iterable[Audience]) -> dict[str, int]:
    """Event type -> days of history the audiences' event conditions need."""
    out: dict[str, int] = {}
    for a in audiences:
        for etype, days in a.windows:
            out[etype] = max(out.get(etype, 0), math.ceil(days))
    return out


def moves_with_time(audiences: Iterable[Audience]) -> bool:
    """True when a membership can change without an event of the customer's: an event
    window passes, or the RFM segment moves with the population. (Traits change only with
    events, and a segment change is a write that evaluates memberships anyway.)

    >>> from models.audiences import parse_audience
    >>> moves_with_time([parse_audience("a", {"name": "n", "where": {"not": {"rfm": "Lost"}}})])
    True
    >>> moves_with_time([parse_audience("a", {"name": "n", "where": {"segment": "s1"}})])
    False
    """
    todo = [a.root for a in audiences]
    while todo:
        node = todo.pop()
        if node.kind in ("event", "rfm"):
            return True
        todo.extend(node.children)
    return False


def record(state: CustomerState, etype: str, ts_ms: int, amount: float,
           keep: Mapping[str, int]) -> None:
    """Count an applied event in its day's bucket, if its type is tracked; days older than
    ``keep[etype]`` before the customer's newest one are dropped."""
    days = keep.get(etype)
    if not days:
        return
    day = ts_ms // DAY_MS
    buckets = state.windows.setdefault(etype, {})
    cell = buckets.get(day)
    if cell is None:
        buckets[day] = [1.0, amount]
    else:
        cell[0] += 1
        cell[1] += amount
    newest = state.last_ts // DAY_MS if state.last_ts else day
    for d in [d for d in buckets if d <= newest - days]:
        del buckets[d]


def applied_event(state: CustomerState, ev: Event, keep: Mapping[str, int]) -> None:
    """What audiences need of an event just applied to ``state``: its id (the one an
    audience change names, with or without a model) and its count in the windows."""
    state.last_event_id = ev.event_id
    if keep:
        record(state, ev.type, ev.ts_ms, ev.amount, keep)


def window(state: CustomerState, now_ms: int) -> Window:
    """The ``Facts.window`` of this customer as of ``now_ms``."""
    today = now_ms // DAY_MS

    def read(etype: str, days: float, agg: str) -> float:
        first = today - math.ceil(days) + 1
        i = 0 if agg == "count" else 1
        return sum(c[i] for d, c in state.windows.get(etype, {}).items()
                   if first <= d <= today)
    return read


def memberships(audiences: Sequence[Audience], state: CustomerState, traits: dict[str, Any],
                now_ms: int) -> list[str]:
    """Ids of the audiences the customer is in, as of ``now_ms`` (event time)."""
    if not audiences:
        return []
    facts = Facts(traits, segment=state.segment, rfm=state.rfm,
                  window=window(state, max(now_ms, state.last_ts)))
    return [a.id for a in audiences if a.matches(facts)]
