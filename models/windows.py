"""Event windows and audience memberships of one customer (contract §2.3). Pure.

An audience's event condition ("``purchase`` at least twice within 30 days") reads counts
and sums of the customer's events of one type over the last N days of event time. The state
keeps them per UTC day (:attr:`CustomerState.windows`: type -> day -> ``[count, sum]``),
:data:`~models.audiences.MAX_DAYS` days back from the customer's newest event at most:

- ``purchase`` always, from the customer's first event on (:data:`ALWAYS`): a new audience
  "2 purchases in the last 30 days" counts the purchases made before it existed;
- every other type only while an audience names it, from the moment one does (earlier
  events of that type are not in the window), as many days back as the longest window
  naming it (:func:`kept`). Keeping every type from the first event cost ~750 B more per
  simulated customer over 30 days (~1,960 B over 90; the target is 1 KiB for everything),
  ``purchase`` alone ~56 B (~142 B over 90 days): measured on 1,000 simulated customers,
  lean state size (README, Audiences). :func:`history` says which a condition gets.

Granularity: a day. "Within N days" counts the events of the last N UTC days up to "now"
(today included), so a purchase on day d counts until the end of day d + N - 1 and its
membership ends on day d + N, with or without new events. "Now" is the later of the
customer's last event and the stream's latest event time (the watermark).

Examples
--------
>>> from models.audiences import parse_audience
>>> a = parse_audience("a1", {"name": "n", "where": {"event": "purchase", "within_days": 30,
...                                                    "count": {"op": ">=", "value": 1}}})
>>> keep = kept([a])
>>> keep
{'purchase': 365}
>>> s = CustomerState("c1")
>>> record(s, "purchase", 10 * DAY_MS, 25.0, keep)
>>> record(s, "page_view", 10 * DAY_MS, 0.0, keep)  # no audience names it: costs nothing
>>> s.windows
{'purchase': {10: [1.0, 25.0]}}
>>> memberships([a], s, {}, 39 * DAY_MS), memberships([a], s, {}, 40 * DAY_MS)
(['a1'], [])
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from models.audiences import MAX_DAYS, Audience, Facts, Window
from models.events import Event
from models.state import CustomerState

__all__ = ["ALWAYS", "DAY_MS", "applied_event", "history", "kept", "memberships",
           "moves_with_time", "record", "window"]

DAY_MS = 86_400_000
ALWAYS: Mapping[str, int] = {"purchase": MAX_DAYS}
"""Event type -> days kept from every customer's first event, named by an audience or not."""


def kept(audiences: Iterable[Audience]) -> dict[str, int]:
    """Event type -> days of history kept: :data:`ALWAYS`, and each type the audiences'
    event conditions name for the longest window naming it."""
    out = dict(ALWAYS)
    for a in audiences:
        for etype, days in a.windows:
            out[etype] = max(out.get(etype, 0), math.ceil(days))
    return out


def history(etype: str) -> str:
    """What a window over ``etype`` counts: ``"complete"`` (every event of the last
    :data:`~models.audiences.MAX_DAYS` days, from the customer's first on) or
    ``"since_named"`` (only events applied while an audience named the type).

    >>> history("purchase"), history("page_view")
    ('complete', 'since_named')
    """
    return "complete" if etype in ALWAYS else "since_named"


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
    """Count an applied event in its day's bucket, if its type is kept; days older than
    ``keep[etype]`` before the customer's newest one are dropped (looked for only when the
    oldest bucket is past: events come mostly in time order, so this is rarely a scan)."""
    days = keep.get(etype)
    if not days:
        return
    day = ts_ms // DAY_MS
    windows = state.windows
    buckets = windows.get(etype)
    if buckets is None:
        buckets = windows[etype] = {}
    cell = buckets.get(day)
    if cell is None:
        buckets[day] = [1.0, amount]
    else:
        cell[0] += 1
        cell[1] += amount
    last = state.last_ts
    oldest = (last // DAY_MS if last else day) - days  # days up to this one are dropped
    if next(iter(buckets)) <= oldest:
        for d in [d for d in buckets if d <= oldest]:
            del buckets[d]


def applied_event(state: CustomerState, ev: Event, keep: Mapping[str, int]) -> None:
    """What audiences need of an event just applied to ``state``: its id (the one an
    audience change names, with or without a model) and its count in the windows."""
    state.last_event_id = ev.event_id
    if ev.type in keep:  # most events' types are not kept: no call for them
        record(state, ev.type, ev.ts_ms, ev.amount, keep)


def window(state: CustomerState, now_ms: int) -> Window:
    """The ``Facts.window`` of this customer as of ``now_ms``."""
    today = now_ms // DAY_MS
    windows = state.windows

    def read(etype: str, days: float, agg: str) -> float:
        buckets = windows.get(etype)
        if not buckets:  # no event of the type kept: the sum of no day
            return 0
        first = today - math.ceil(days) + 1
        i = 0 if agg == "count" else 1
        return sum([c[i] for d, c in buckets.items() if first <= d <= today])
    return read


def memberships(audiences: Sequence[Audience], state: CustomerState, traits: dict[str, Any],
                now_ms: int) -> list[str]:
    """Ids of the audiences the customer is in, as of ``now_ms`` (event time)."""
    if not audiences:
        return []
    facts = Facts(traits, segment=state.segment, rfm=state.rfm,
                  window=window(state, max(now_ms, state.last_ts)))
    return [a.id for a in audiences if a.matches(facts)]
