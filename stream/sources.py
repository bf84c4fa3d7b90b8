"""Files of events for ``segmenter replay``: JSON lines, or CSV with a header line
(:mod:`stream.columns` makes its rows events), either optionally gzipped (by the name or the
first bytes)."""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timezone
from typing import Any

import orjson

from stream.columns import ColumnPlan, parse_offset, with_offset
from stream.errors import SegmenterError

GZIP_MAGIC = b"\x1f\x8b"
Line = tuple[int, bytes | None, str | None, Any]
"""``(line number, event JSON or None, why the line is invalid or None, source)``; the source
is the line's bytes (JSON lines) or its cells (CSV), for the rejects file."""


@dataclass(slots=True)
class EventFile:
    """An input file, opened: :meth:`lines` reads it; :meth:`position` is how far (bytes of
    the file itself, compressed or not) of :attr:`size`."""

    path: str
    fmt: str = "auto"
    """``jsonl``, ``csv`` or ``auto`` (by the name, else by the first character)."""
    mapping: Mapping[str, str] = field(default_factory=dict)
    default_type: str | None = None
    tz: timezone | None = None
    encoding: str = "utf-8"
    size: int = 0
    gzipped: bool = False
    _raw: Any = None
    _stream: Any = None
    _rows: Any = None
    _plan: Any = None
    _bad: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise SegmenterError(f"unknown --encoding {self.encoding!r}") from None
        self._raw = open(self.path, "rb")  # noqa: SIM115 (closed by close())
        self.size = os.fstat(self._raw.fileno()).st_size
        self.gzipped = self.path.endswith(".gz") or self._raw.peek(2)[:2] == GZIP_MAGIC
        self._stream = gzip.GzipFile(fileobj=self._raw) if self.gzipped else self._raw
        try:
            head = self._stream.peek(4096)[:4096]
        except (OSError, EOFError) as exc:
            self.close()
            raise SegmenterError(f"{self.path}: not a readable gzip file ({exc})") from None
        if self.fmt == "auto":
            name = self.path[:-3] if self.path.endswith(".gz") else self.path
            ext = os.path.splitext(name)[1].lower()
            if ext in (".csv", ".tsv"):
                self.fmt = "csv"
            elif ext in (".jsonl", ".ndjson", ".json"):
                self.fmt = "jsonl"
            else:
                self.fmt = "jsonl" if head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"{" else "csv"
        if self.fmt == "csv":
            try:
                self._read_header()
            except (OSError, EOFError) as exc:
                self.close()
                raise SegmenterError(f"{self.path}: read failed: {exc}") from None
            except SegmenterError:
                self.close()
                raise

    def position(self) -> int:
        """Bytes of the file read so far."""
        return int(self._raw.tell())

    def close(self) -> None:
        """Close the file."""
        self._raw.close()

    def lines(self) -> Iterator[Line]:
        """Every non-blank line (JSON lines) or data row (CSV)."""
        try:
            if self.fmt == "csv":
                yield from self._csv()
            else:
                yield from self._jsonl()
        except (OSError, EOFError) as exc:  # a truncated or corrupt gzip stream
            raise SegmenterError(f"{self.path}: read failed: {exc}") from None

    def _jsonl(self) -> Iterator[Line]:
        rewrite = bool(self.mapping or self.default_type or self.tz)
        for n, raw in enumerate(self._stream, 1):
            line = raw.rstrip(b"\r\n")
            if not line.strip():
                continue
            if not rewrite:
                yield n, line, None, line
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                yield n, None, f"value is not valid UTF-8 JSON: {exc}", line
                continue
            if isinstance(obj, dict):
                for src, dst in self.mapping.items():
                    if src in obj:
                        _put(obj, dst, obj.pop(src))
                if self.default_type and "type" not in obj:
                    obj["type"] = self.default_type
                if isinstance(obj.get("timestamp"), str):
                    obj["timestamp"] = with_offset(obj["timestamp"], self.tz)
            yield n, orjson.dumps(obj), None, line

    def _decoded(self, bad: set[int]) -> Iterator[str]:
        decode = codecs.getdecoder(self.encoding)
        for n, raw in enumerate(self._stream, 1):
            try:
                yield decode(raw)[0]
            except UnicodeDecodeError:
                bad.add(n)
                yield decode(raw, "replace")[0]

    def _read_header(self) -> None:
        # Read when the file is opened, so that a header without the needed columns is
        # refused before anything is sent.
        text = self._decoded(self._bad)
        first = next(text, "").lstrip("\ufeff")
        self._rows = csv.reader(_chain(first, text), delimiter=max(",;\t|", key=first.count))
        header = next(self._rows, None)
        if not header:
            raise SegmenterError(f"{self.path}: empty file, or no CSV header line")
        self._plan = ColumnPlan.from_header(header, self.mapping, self.default_type, self.tz,
                                            os.path.basename(self.path))

    def _csv(self) -> Iterator[Line]:
        rows, plan, bad = self._rows, self._plan, self._bad
        done = rows.line_num
        for cells in rows:
            n = rows.line_num
            first_line, done = done + 1, n
            if not any(c.strip() for c in cells):
                continue
            if bad and any(i in bad for i in range(first_line, n + 1)):
                yield n, None, f"line is not valid {self.encoding}", cells
            elif len(cells) > plan.width:
                yield n, None, f"row has {len(cells)} cells, the header {plan.width}", cells
            else:
                yield n, orjson.dumps(plan.event(cells, n)), None, cells


def _put(obj: dict[str, Any], dst: str, value: object) -> None:
    where, dot, name = dst.partition(".")
    if dot and where in ("properties", "traits"):
        inner = obj.setdefault(where, {})
        if isinstance(inner, dict):
            inner[name] = value
    elif dst:
        obj[dst] = value


def _chain(first: str, rest: Iterator[str]) -> Iterator[str]:
    yield first
    yield from rest


def source_text(source: Any, delimiter: str = ",") -> str:
    """A rejected line as text, for the rejects file."""
    if isinstance(source, bytes):
        return source.decode("utf-8", "replace")
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator="").writerow(source)
    return out.getvalue()


def open_events(path: str, fmt: str = "auto", mapping: Mapping[str, str] | None = None,
                default_type: str | None = None, tz: str | None = None,
                encoding: str = "utf-8") -> EventFile:
    """Open ``path`` (raises :class:`SegmenterError` with what is wrong)."""
    if not os.path.isfile(path):
        raise SegmenterError(f"no such file: {path}")
    return EventFile(path, fmt, dict(mapping or {}), default_type,
                     parse_offset(tz) if tz else None, encoding)


def read_mapping(pairs: list[str] | None) -> dict[str, str]:
    """``--map SRC=DST`` options as a dict.

    >>> read_mapping(["InvoiceNo=event_id", "Description="])
    {'InvoiceNo': 'event_id', 'Description': ''}
    """
    out = {}
    for pair in pairs or []:
        src, sep, dst = pair.partition("=")
        if not sep or not src.strip():
            raise SegmenterError(f"--map takes SOURCE=FIELD, got {pair!r}")
        out[src.strip()] = dst.strip()
    return out

