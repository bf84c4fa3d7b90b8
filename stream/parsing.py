"""Event validation in a helper process, in parallel with the batch being applied.

Parsing and validating JSON (:func:`models.events.parse_event`) is the largest single cost
of a busy worker, and it needs nothing but the message bytes. :class:`Validator` runs it for
a whole batch in one spawned process while the event loop applies the previous batch; the
events come back as plain tuples (``marshal``, the cheapest codec for them) and become
:class:`~models.events.Event` again here, at a fifth of the cost of parsing. The results are
exactly what inline parsing gives; if the helper cannot run, the worker validates inline.

The wall clock is read once per batch, here in the worker: event times more than
``SEGMENTER_MAX_FUTURE_S`` ahead of it are invalid (:func:`models.events.latest_allowed_ms`).

The helper imports only this module and the event parser (no NumPy, River or Faust).
"""

from __future__ import annotations

import functools
import marshal
import time
from collections.abc import Sequence

from models.events import (
    DEFAULT_MAX_FUTURE_S,
    Event,
    InvalidEvent,
    Traits,
    latest_allowed_ms,
    parse_event,
)
from models.records import RecordLike
from stream.helper import Helper, HelperGone


def validate(blob: bytes) -> bytes:
    """Parse ``marshal.dumps((values, keys, max_ts_ms))`` of a batch (runs in the helper:
    ``max_ts_ms`` as in :func:`~models.events.parse_event`, None: no bound); returns,
    marshalled, one event tuple per record (a placeholder where invalid) and the records to
    fix up in :func:`decode`: the reason a record is invalid, or an event's traits.

    >>> values = [b'{"event_id": "e1", "customer_id": "c1", "type": "search",'
    ...           b' "timestamp": 1767225600000}', b"[]",
    ...           b'{"event_id": "e2", "customer_id": "c2", "type": "identify",'
    ...           b' "timestamp": 1767225600000, "traits": {"age": 31}}']
    >>> keys = [b"c1", None, b"c2"]
    >>> out = decode(validate(marshal.dumps((values, keys, None))))
    >>> out[1]
    'value must be a JSON object, got list'
    >>> [out[i] == parse_event(values[i], keys[i]) for i in (0, 2)], out[2].traits.age
    ([True, True], 31.0)
    >>> decode(validate(marshal.dumps((values[:1], keys[:1], 1767225599999))))[0]
    'timestamp 1767225600000 is ahead of the clock by more than SEGMENTER_MAX_FUTURE_S \
(after 2025-12-31T23:59:59Z)'
    """
    values, keys, max_ts_ms = marshal.loads(blob)  # noqa: S302 (bytes from our own worker)
    rows: list[tuple[object, ...]] = []
    fix: list[tuple[int, object]] = []
    # Equal strings of a batch become one object: marshal then writes each once and the
    # worker reads it once (measured: its unmarshalling cost halves), and the worker's dict
    # lookups by customer id hash each id once per batch, not once per event.
    seen: dict[str | None, str | None] = {}
    one = seen.setdefault
    for i, (value, key) in enumerate(zip(values, keys, strict=True)):
        try:
            e = parse_event(value, key, max_ts_ms=max_ts_ms)
        except InvalidEvent as exc:
            rows.append(())
            fix.append((i, str(exc)))
            continue
        (event_id, cid, etype, ts, hour, amount, category, device, channel, country, region,
         traits, id_hash, anonymous_id) = e
        rows.append((event_id, one(cid, cid), one(etype, etype), ts, hour, amount,
                     one(category, category), one(device, device), one(channel, channel),
                     one(country, country), one(region, region), None, id_hash,
                     one(anonymous_id, anonymous_id)))
        if traits is not None:  # rare (identify events): Traits rebuilt in decode
            fix.append((i, tuple(traits)))
    return marshal.dumps((rows, fix))


def validate_ids(blob: bytes) -> bytes:
    """:meth:`Validator.customer_ids` in the helper: ``marshal.dumps((values, max_ts_ms))``
    in, the marshalled answer out.

    >>> marshal.loads(validate_ids(marshal.dumps(([b'{"event_id": "e1", "customer_id": "c1",'
    ...     b' "type": "search", "timestamp": 0}', b"{}"], None))))
    (['c1', ''], {1: "missing field 'event_id'"})
    """
    values, max_ts_ms = marshal.loads(blob)  # noqa: S302 (bytes from our own worker)
    return marshal.dumps(_ids(values, max_ts_ms))


def _ids(values: list[bytes | None], max_ts_ms: int | None
         ) -> tuple[list[str], dict[int, str]]:
    ids: list[str] = []
    reasons: dict[int, str] = {}
    for i, value in enumerate(values):
        try:
            ids.append(parse_event(value, None, max_ts_ms=max_ts_ms).customer_id)
        except InvalidEvent as exc:
            reasons[i] = str(exc)
            ids.append("")
    return ids, reasons


def _parse(value: bytes | None, key: bytes | None, max_ts_ms: int) -> Event | str:
    try:
        return parse_event(value, key, max_ts_ms=max_ts_ms)
    except InvalidEvent as exc:
        return str(exc)


def decode(blob: bytes) -> list[Event | str]:
    """Inverse of the helper's side of :func:`validate`."""
    rows, fix = marshal.loads(blob)  # noqa: S302 (bytes from our own helper)
    # What Event(*row) does without re-checking the fields, and in one C-level loop: most
    # of a batch is plain events; the few others are fixed up after.
    out: list[Event | str] = list(map(functools.partial(tuple.__new__, Event), rows))
    for i, x in fix:
        out[i] = x if isinstance(x, str) else out[i]._replace(traits=Traits(*x))
    return out


class Validator(Helper):
    """Validates batches in one helper process (spawned by :meth:`start`); event times more
    than ``max_future_s`` ahead of the wall clock are invalid."""

    fallback = "events are validated"

    def __init__(self, enabled: bool = True,
                 max_future_s: float = DEFAULT_MAX_FUTURE_S) -> None:
        super().__init__(enabled)
        self.max_future_s = max_future_s

    def max_ts_ms(self) -> int:
        """The latest event time accepted now (one clock reading: call it once per batch)."""
        return latest_allowed_ms(int(time.time() * 1000), self.max_future_s)

    def inline(self, records: Sequence[RecordLike]) -> list[Event | str]:
        """What :meth:`validate` gives, :func:`decode`-d, computed in this process (when the
        helper is not running); for :meth:`models.core.Segmenter.parse`."""
        limit = self.max_ts_ms()
        return [_parse(r.value, r.key, limit) for r in records]

    async def customer_ids(self, values: list[bytes | None]
                           ) -> tuple[list[str], dict[int, str]]:
        """Validate values that come without a key (lines of a file): per value its customer
        id ("" when invalid), and by index why each invalid one is; in the helper when it
        runs, else in this process. (No events are built: a replay needs only the key.)"""
        limit = self.max_ts_ms()
        if self.running:
            try:
                blob = await self.call(validate_ids, marshal.dumps((values, limit)))
                ids: tuple[list[str], dict[int, str]] = marshal.loads(blob)  # noqa: S302
                return ids
            except HelperGone:
                pass
        return _ids(values, limit)

    async def validate(self, records: Sequence[RecordLike]) -> bytes | None:
        """Per record, its event or why it is invalid (:func:`decode` them); None when the
        helper is not running or failed (the caller validates inline)."""
        if not self.running:
            return None
        try:
            # marshal: a third of what pickling the records costs the worker
            sent = marshal.dumps(([r.value for r in records], [r.key for r in records],
                                  self.max_ts_ms()))
            blob: bytes = await self.call(validate, sent)
        except HelperGone:
            return None
        return blob
