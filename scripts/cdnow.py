"""The CDNOW purchase log (a real, public transaction log) as Segmenter events.

CDNOW_master.txt holds every CD purchase of 23,570 customers who first bought at the CDNOW
online store in the first quarter of 1997, until June 1998: 69,659 rows of customer id, date
(YYYYMMDD), number of CDs and dollar value. It is shipped inside the ``lifetimes`` package on
PyPI (MIT licence), which this module only reads a file from; nothing of it is imported, so
``pip install --no-deps lifetimes==0.11.3`` is enough (``btyd`` ships the same file).

Each row becomes one ``purchase`` event with its amount; ``event_id`` is the row number. The log
has dates only, so every event is at 12:00 UTC. The dates are the log's own (1997-98): any
time from the Unix epoch on is a valid event time.

Examples
--------
>>> rows = ["00001 19970101  1   11.77", "00002 19970112  5   77.00", "00002 19970101 1 0.00"]
>>> [(e["customer_id"], e["timestamp"][:10], e["properties"]["amount"])
...  for e in to_events(rows)]
[('cd00001', '1997-01-01', 11.77), ('cd00002', '1997-01-01', 0.0), ('cd00002', '1997-01-12', 77.0)]
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from importlib import metadata
from pathlib import Path
from typing import Any

INSTALL = "pip install --no-deps lifetimes==0.11.3"
_FILE = "lifetimes/datasets/CDNOW_master.txt"


def cdnow_path() -> Path | None:
    """Where the installed ``lifetimes`` (or ``btyd``) package keeps the log, if it is."""
    for dist, rel in (("lifetimes", _FILE), ("btyd", "btyd/datasets/CDNOW_master.txt")):
        try:
            path = Path(str(metadata.distribution(dist).locate_file(rel)))
        except metadata.PackageNotFoundError:
            continue
        if path.is_file():
            return path
    return None


def to_events(lines: Iterable[str], every: int = 1) -> list[dict[str, Any]]:
    """Events of the log's rows (customers whose id is a multiple of ``every``), in
    event-time order (stable: a customer's same-day rows keep the log's order)."""
    events: list[tuple[str, dict[str, Any]]] = []
    for n, line in enumerate(lines):
        parts = line.split()
        if len(parts) != 4 or not parts[0].isdigit() or int(parts[0]) % every:
            continue
        cid, day, _, dollars = parts
        when = date(int(day[:4]), int(day[4:6]), int(day[6:]))
        events.append((when.isoformat(), {
            "event_id": f"cdnow-{n}", "customer_id": f"cd{cid}", "type": "purchase",
            "timestamp": f"{when.isoformat()}T12:00:00Z",
            "properties": {"amount": float(dollars), "currency": "USD"}}))
    events.sort(key=lambda p: p[0])
    return [e for _, e in events]


def load_cdnow(path: Path | None = None, every: int = 1) -> list[dict[str, Any]]:
    """:func:`to_events` of the installed log (or ``path``); raises FileNotFoundError saying
    how to install it."""
    path = path or cdnow_path()
    if path is None:
        raise FileNotFoundError(f"the CDNOW log is not installed: {INSTALL}")
    return to_events(path.read_text().splitlines(), every)
