"""Audience definitions (contract §2.3): parsing with errors that name the problem, and
evaluation against one customer's facts. Pure (stored by ``stream.audiences_io``, evaluated
by the core with the windows of ``models.windows``).

A definition is ``{"name": "...", "where": <condition>}``; a condition is one of

- ``{"trait": <name>, "op": <op>, "value": ...}``, ``op`` one of ``=``, ``!=``, ``<``,
  ``<=``, ``>``, ``>=``, ``in``, ``not_in``, ``contains``;
- ``{"event": <type>, "within_days": N, "count": {"op": ..., "value": ...}}`` or with
  ``"sum"`` (of ``amount``) instead of ``"count"``;
- ``{"segment": <segment id>}``, ``{"rfm": <RFM segment name>}``;
- ``{"all": [...]}``, ``{"any": [...]}``, ``{"not": <condition>}``.

An event condition names one of the contract's event types (:data:`WINDOW_TYPES`) and a
window of at most :data:`MAX_DAYS` days: what the customer's state keeps.

A trait the customer does not have makes its condition false (so ``{"not": ...}`` of it is
true). Event conditions are answered by the caller's ``window`` (count or sum of the
customer's events of a type within N days of event time).

Examples
--------
>>> a = parse_audience("a-repeat-de", {"name": "Repeat buyers in DE or AT", "where": {"all": [
...     {"event": "purchase", "within_days": 30, "count": {"op": ">=", "value": 2}},
...     {"trait": "country", "op": "in", "value": ["DE", "AT"]}]}})
>>> facts = Facts({"country": "AT"}, window=lambda kind, days, agg: 3.0)
>>> a.matches(facts), a.matches(Facts({"country": "FR"}, window=lambda *_: 3.0))
(True, False)
>>> parse_audience("x", {"name": "n", "where": {"trait": "orders", "op": "~", "value": 1}})
Traceback (most recent call last):
...
models.audiences.InvalidAudience: where.op: must be one of =, !=, <, <=, >, >=, in, not_in, contains
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from models.events import KNOWN_TYPES
from models.rfm import GRID
from models.traits import TRAIT_NAMES

__all__ = ["MAX_DAYS", "WINDOW_TYPES", "Audience", "Facts", "InvalidAudience",
           "parse_audience"]

OPS = ("=", "!=", "<", "<=", ">", ">=", "in", "not_in", "contains")
RFM_NAMES = frozenset(n for row in GRID.values() for n in row)
MAX_DAYS = 365
"""Longest window of an event condition, in days: the most days of daily counts a customer's
state keeps (``models.windows``)."""
WINDOW_TYPES = KNOWN_TYPES
"""Event types an event condition may name: the contract's (§1), whose events are applied."""
MAX_DEPTH = 8
MAX_CONDITIONS = 64
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

Window = Callable[[str, float, str], float]
"""``(event type, within days, "count" | "sum") -> value`` for one customer."""


class InvalidAudience(ValueError):
    """A definition that breaks the language; ``str()`` names where and why."""


@dataclass(frozen=True, slots=True)
class Facts:
    """What an audience is evaluated on, for one customer."""

    traits: Mapping[str, Any]
    """Live traits (``models.traits``), by name; absent when unknown."""
    segment: str = ""
    """Learned segment id."""
    rfm: str = ""
    """RFM segment name (empty without a purchase)."""
    window: Window | None = None
    """Event counts and sums within a window; None: no event condition holds."""


def _ordered(test: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def compare(have: Any, want: Any) -> bool:
        if isinstance(have, str) != isinstance(want, str) or isinstance(have, list):
            return False  # an order between a number and a string is no answer
        return bool(test(have, want))
    return compare


# one function per op: a dict lookup instead of a chain of string comparisons (every
# condition of every audience is evaluated at every write)
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "contains": lambda have, want: want in have if isinstance(have, list | str) else False,
    "in": lambda have, want: bool(have in want),
    "not_in": lambda have, want: bool(have not in want),
    "=": lambda have, want: bool(have == want),
    "!=": lambda have, want: bool(have != want),
    "<": _ordered(operator.lt), "<=": _ordered(operator.le),
    ">": _ordered(operator.gt), ">=": _ordered(operator.ge),
}


def _compare(have: Any, op: str, want: Any) -> bool:
    if have is None:
        return False
    return _OPS[op](have, want)


@dataclass(frozen=True, slots=True)
class _Node:
    kind: str
    args: tuple[Any, ...] = ()
    children: tuple[_Node, ...] = field(default=())

    def holds(self, f: Facts) -> bool:
        return _HOLDS[self.kind](self, f)


# loops, not all()/any() of a generator: those made memberships ~40% slower (measured)
def _all(n: _Node, f: Facts) -> bool:
    for c in n.children:  # noqa: SIM110
        if not _HOLDS[c.kind](c, f):
            return False
    return True


def _any(n: _Node, f: Facts) -> bool:
    for c in n.children:  # noqa: SIM110
        if _HOLDS[c.kind](c, f):
            return True
    return False


def _event(n: _Node, f: Facts) -> bool:
    if f.window is None:
        return False
    a = n.args
    return _compare(f.window(a[0], a[1], a[2]), a[3], a[4])


_HOLDS: dict[str, Callable[[_Node, Facts], bool]] = {
    # by kind: a dict lookup instead of a chain of string comparisons per node
    "all": _all,
    "any": _any,
    "not": lambda n, f: not n.children[0].holds(f),
    "segment": lambda n, f: bool(f.segment) and f.segment == n.args[0],
    "rfm": lambda n, f: bool(f.rfm) and f.rfm == n.args[0],
    "trait": lambda n, f: _compare(f.traits.get(n.args[0]), n.args[1], n.args[2]),
    "event": _event,
}


@dataclass(frozen=True, slots=True)
class Audience:
    """A parsed, valid audience."""

    id: str
    name: str
    definition: dict[str, Any]
    """The definition as given (what ``GET /audiences/<id>`` shows)."""
    root: _Node

    def matches(self, facts: Facts) -> bool:
        """True when the customer with these facts is in the audience."""
        return self.root.holds(facts)

    @property
    def windows(self) -> set[tuple[str, float]]:
        """The (event type, days) windows its event conditions read."""
        out, todo = set(), [self.root]
        while todo:
            n = todo.pop()
            todo.extend(n.children)
            if n.kind == "event":
                out.add((n.args[0], n.args[1]))
        return out


def parse_audience(audience_id: str, body: Any) -> Audience:
    """Validate a definition; raises :class:`InvalidAudience` naming the problem."""
    if not isinstance(audience_id, str) or not _ID.match(audience_id):
        raise InvalidAudience("id: 1 to 64 letters, digits, '_', '.' or '-', starting with a "
                              "letter or digit")
    if not isinstance(body, dict):
        raise InvalidAudience("body: must be a JSON object with 'name' and 'where'")
    extra = set(body) - {"name", "where"}
    if extra:
        raise InvalidAudience(f"body: unknown field {sorted(extra)[0]!r}")
    name = body.get("name")
    if not isinstance(name, str) or not 0 < len(name) <= 200:
        raise InvalidAudience("name: must be a string of 1 to 200 characters")
    if "where" not in body:
        raise InvalidAudience("where: missing")
    count = [0]
    return Audience(audience_id, name, body, _parse(body["where"], "where", 0, count))


def _parse(c: Any, at: str, depth: int, count: list[int]) -> _Node:
    count[0] += 1
    if count[0] > MAX_CONDITIONS or depth > MAX_DEPTH:
        raise InvalidAudience(f"{at}: at most {MAX_CONDITIONS} conditions, nested at most "
                              f"{MAX_DEPTH} deep")
    if not isinstance(c, dict):
        raise InvalidAudience(f"{at}: a condition must be a JSON object")
    kinds = [k for k in ("trait", "event", "segment", "rfm", "all", "any", "not") if k in c]
    if len(kinds) != 1:
        raise InvalidAudience(f"{at}: must have exactly one of trait, event, segment, rfm, all, "
                              f"any, not (got {sorted(c) or 'none'})")
    kind = kinds[0]
    allowed = {"trait": {"trait", "op", "value"}, "event": {"event", "within_days", "count",
                                                            "sum"}}.get(kind, {kind})
    extra = set(c) - allowed
    if extra:
        raise InvalidAudience(f"{at}: unknown field {sorted(extra)[0]!r} in a {kind} condition")
    if kind in ("all", "any"):
        items = c[kind]
        if not isinstance(items, list) or not items:
            raise InvalidAudience(f"{at}.{kind}: must be a non-empty list of conditions")
        return _Node(kind, children=tuple(_parse(x, f"{at}.{kind}[{i}]", depth + 1, count)
                                          for i, x in enumerate(items)))
    if kind == "not":
        return _Node("not", children=(_parse(c["not"], f"{at}.not", depth + 1, count),))
    if kind == "segment":
        if not isinstance(c["segment"], str) or not c["segment"]:
            raise InvalidAudience(f"{at}.segment: must be a segment id (a non-empty string)")
        return _Node("segment", (c["segment"],))
    if kind == "rfm":
        if c["rfm"] not in RFM_NAMES:
            raise InvalidAudience(f"{at}.rfm: must be one of {', '.join(sorted(RFM_NAMES))}")
        return _Node("rfm", (c["rfm"],))
    if kind == "trait":
        if c["trait"] not in TRAIT_NAMES:
            raise InvalidAudience(f"{at}.trait: unknown trait {c['trait']!r}; one of "
                                  f"{', '.join(TRAIT_NAMES)}")
        op, value = _op(c, at)
        return _Node("trait", (c["trait"], op, value))
    etype = c["event"]
    if not isinstance(etype, str) or etype not in WINDOW_TYPES:
        raise InvalidAudience(f"{at}.event: must be an event type, one of "
                              f"{', '.join(sorted(WINDOW_TYPES))}")
    days = c.get("within_days")
    if isinstance(days, bool) or not isinstance(days, int | float) or not 0 < days <= MAX_DAYS:
        raise InvalidAudience(f"{at}.within_days: must be a number of days in (0, {MAX_DAYS}]")
    aggs = [a for a in ("count", "sum") if a in c]
    if len(aggs) != 1:
        raise InvalidAudience(f"{at}: an event condition needs exactly one of count, sum")
    agg = aggs[0]
    if not isinstance(c[agg], dict) or set(c[agg]) != {"op", "value"}:
        raise InvalidAudience(f"{at}.{agg}: must be {{\"op\": ..., \"value\": <number>}}")
    op, value = _op(c[agg], f"{at}.{agg}")
    if op not in ("=", "!=", "<", "<=", ">", ">=") or not _number(value):
        raise InvalidAudience(f"{at}.{agg}: compares with =, !=, <, <=, >, >= and a number")
    return _Node("event", (etype, float(days), agg, op, value))


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _op(c: dict[str, Any], at: str) -> tuple[str, Any]:
    op = c.get("op")
    if op not in OPS:
        raise InvalidAudience(f"{at}.op: must be one of {', '.join(OPS)}")
    if "value" not in c:
        raise InvalidAudience(f"{at}.value: missing")
    value = c["value"]
    if op in ("in", "not_in"):
        if not isinstance(value, list) or not value or len(value) > 1000:
            raise InvalidAudience(f"{at}.value: '{op}' needs a list of 1 to 1000 values")
    elif op in ("<", "<=", ">", ">="):
        if not _number(value) and not isinstance(value, str):
            raise InvalidAudience(f"{at}.value: '{op}' needs a number or a string")
    elif isinstance(value, dict | list) and op != "contains":
        raise InvalidAudience(f"{at}.value: '{op}' needs a single value")
    return op, value
