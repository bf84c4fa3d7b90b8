"""CSV rows as events (SPEC §1), for ``segmenter replay``.

Columns named like an event field (``event_id``, ``customer_id``, ``anonymous_id``, ``type``,
``timestamp``, in any case) fill it, ``traits.<name>`` columns fill the traits, and every
other column is a property (``properties.<name>`` also works): numbers become JSON numbers,
except in ids and the contract's text properties. ``--map SRC=DST`` renames a column first
(an empty DST drops it).

Examples
--------
>>> plan = ColumnPlan.from_header(["InvoiceNo", "CustomerID", "InvoiceDate", "Amount",
...                                "StockCode", "Quantity"], {"InvoiceNo": "event_id",
...                                "CustomerID": "customer_id", "InvoiceDate": "timestamp",
...                                "StockCode": "product_id"}, "purchase", None)
>>> plan.event(["536365", "17850", "2010-12-01T08:26:00+00:00", "15.30", "85123A", "6"], 2)
{'event_id': '536365', 'customer_id': '17850', 'timestamp': '2010-12-01T08:26:00+00:00', \
'properties': {'amount': 15.3, 'product_id': '85123A', 'Quantity': 6}, 'type': 'purchase'}
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from stream.errors import SegmenterError

FIELDS = ("event_id", "customer_id", "anonymous_id", "type", "timestamp")
"""Top-level event fields a column may fill."""
_PROPS = ("amount", "currency", "category", "product_id", "device", "channel", "country",
          "region")
_TEXT = frozenset(("currency", "category", "product_id", "device", "channel", "country",
                   "region", "sku", "order_id", "invoice", "zip", "postcode", "phone"))
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?")
_INT = re.compile(r"-?\d+")


def parse_offset(text: str) -> timezone:
    """A UTC offset such as ``Z``, ``+01:00``, ``-0530``.

    >>> parse_offset("+05:30"), parse_offset("Z")
    (datetime.timezone(datetime.timedelta(seconds=19800)), datetime.timezone.utc)
    """
    m = re.fullmatch(r"(?:UTC|Z)|([+-])(\d\d):?(\d\d)", text.strip(), re.IGNORECASE)
    if not m:
        raise SegmenterError(f"--tz must be a UTC offset such as Z, +01:00 or -05:00, "
                             f"got {text!r}")
    if not m.group(1):
        return UTC
    delta = timedelta(hours=int(m.group(2)), minutes=int(m.group(3)))
    return timezone(-delta if m.group(1) == "-" else delta)


def with_offset(value: str, tz: timezone | None) -> str:
    """``value`` with ``tz`` added when it is an ISO-8601 time without one.

    >>> with_offset("1997-01-01 10:00", parse_offset("+01:00"))
    '1997-01-01T10:00:00+01:00'
    >>> with_offset("1997-01-01T10:00Z", parse_offset("+01:00"))
    '1997-01-01T10:00Z'
    """
    if tz is None:
        return value
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return value  # the validator says why
    return value if parsed.tzinfo else parsed.replace(tzinfo=tz).isoformat()


def _cell_number(text: str) -> object:
    if _INT.fullmatch(text) and _NUMBER.fullmatch(text):
        return int(text)
    if _NUMBER.fullmatch(text):
        return float(text)
    return text


@dataclass(frozen=True, slots=True)
class ColumnPlan:
    """Where each CSV column goes in an event."""

    columns: tuple[tuple[int, str, str], ...]
    """``(index, where, name)``: ``where`` is ``top``, ``prop``, ``num``, ``trait``."""
    width: int
    """Number of header cells."""
    default_type: str | None
    """``type`` of rows without one."""
    tz: timezone | None
    """Offset of timestamps without one."""
    id_prefix: str | None = None
    """Rows get ``<id_prefix>:<line>`` as ``event_id`` (when no column gives one)."""

    @classmethod
    def from_header(cls, header: list[str], mapping: Mapping[str, str],
                    default_type: str | None, tz: timezone | None,
                    id_prefix: str | None = None) -> ColumnPlan:
        """The plan of a header; raises :class:`SegmenterError` naming what is missing."""
        names = [h.strip() for h in header]
        folded = {n.lower(): n for n in names}
        for src in mapping:
            if src not in names and src.lower() not in folded:
                raise SegmenterError(f"--map {src}=...: no column {src!r} in the header "
                                     f"({', '.join(names)})")
        lowered = {k.lower(): v for k, v in mapping.items()}
        cols: list[tuple[int, str, str]] = []
        for i, name in enumerate(names):
            dst = mapping.get(name, lowered.get(name.lower(), name)).strip()
            low = dst.lower()
            if not dst:
                continue
            if low in FIELDS:
                cols.append((i, "top", low))
            elif low.startswith("traits."):
                cols.append((i, "trait", dst[7:]))
            else:
                prop = dst[11:] if low.startswith("properties.") else dst
                prop = prop.lower() if prop.lower() in _PROPS else prop
                cols.append((i, "prop" if prop.lower() in _TEXT else "num", prop))
        got = {name for _, where, name in cols if where == "top"}
        if "event_id" not in got and id_prefix is None:
            raise SegmenterError("no event_id column: name one with --map COLUMN=event_id")
        if not got & {"customer_id", "anonymous_id"}:
            raise SegmenterError(f"no customer_id column: name one with --map "
                                 f"COLUMN=customer_id (columns: {', '.join(names)})")
        if "timestamp" not in got:
            raise SegmenterError(f"no timestamp column: name one with --map COLUMN=timestamp "
                                 f"(columns: {', '.join(names)})")
        if "type" not in got and not default_type:
            raise SegmenterError("no type column: name one with --map COLUMN=type, or give "
                                 "the type of every row with --type (e.g. --type purchase)")
        return cls(tuple(cols), len(names), default_type, tz,
                   None if "event_id" in got else id_prefix)

    def event(self, cells: list[str], line: int) -> dict[str, Any]:
        """The event of one row (empty cells are left out)."""
        event: dict[str, Any] = {}
        props: dict[str, Any] = {}
        traits: dict[str, Any] = {}
        for i, where, name in self.columns:
            if i >= len(cells) or not (text := cells[i].strip()):
                continue
            if where == "top":
                if name == "timestamp":
                    event[name] = int(text) if _INT.fullmatch(text) else with_offset(
                        text, self.tz)
                else:
                    event[name] = text
            elif where == "num":
                props[name] = _cell_number(text)
            elif where == "prop":
                props[name] = text
            elif name == "interests":
                traits[name] = [t.strip() for t in text.split("|") if t.strip()]
            else:
                traits[name] = text if name == "gender" else _cell_number(text)
        if props:
            event["properties"] = props
        if traits:
            event["traits"] = traits
        if self.default_type and "type" not in event:
            event["type"] = self.default_type
        if self.id_prefix is not None and "event_id" not in event:
            event["event_id"] = f"{self.id_prefix}:{line}"
        return event
