"""``segmenter replay FILE``: a backfill of events from a file, with progress and a summary.

Every line is validated as the worker would (:func:`models.events.parse_event`, in a
helper process, with the future bound of ``SEGMENTER_MAX_FUTURE_S``); a valid one is
produced keyed by its customer, an invalid one is not sent: it is reported in the summary
with its line number and reason, and written to the rejects file when one is given.
Messages go out in record batches built here (:class:`stream.produce.BatchSender`). With
``wait``, the replay ends only once the workers' consumer group has committed past every
event it sent.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import orjson
from aiokafka.errors import KafkaError

from stream.credentials import kafka_options
from stream.errors import SegmenterError
from stream.kafka_io import LagReader, ensure_topics
from stream.parsing import Validator
from stream.progress import Progress
from stream.settings import Settings
from stream.sources import EventFile, Line, open_events, source_text


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    """What ``segmenter replay`` was asked to do."""

    path: str
    """Input file."""
    fmt: str = "auto"
    """``jsonl``, ``csv`` or ``auto``."""
    mapping: Mapping[str, str] = field(default_factory=dict)
    """``--map``: column or key renames."""
    default_type: str | None = None
    """``--type`` of rows without one."""
    tz: str | None = None
    """``--tz``: UTC offset of times without one."""
    encoding: str = "utf-8"
    """Text encoding of a CSV file."""
    rate: float = 0.0
    """Events per second (0: as fast as the broker takes them)."""
    rejects: str | None = None
    """File for the invalid lines (JSON lines: line, reason, input)."""
    check: bool = False
    """Validate only; send nothing."""
    wait: bool = False
    """Wait until the workers' group has committed every event sent."""
    wait_timeout: float = 0.0
    """Seconds to wait at most (0: no limit)."""


def reason_kind(reason: str) -> str:
    """A reason without the values that vary line by line, to group lines by.

    >>> reason_kind("timestamp '2026-01-01T00:00:00' has no UTC offset")
    'timestamp … has no UTC offset'
    >>> reason_kind("properties.amount must be a finite number in [0, inf], got -3")
    'properties.amount must be a finite number in [0, inf], got …'
    """
    kind = re.sub(r"^timestamp (?:'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|-?\d+)",
                  "timestamp …", reason)
    kind = re.sub(r"(\], got ).*$", r"\1…", kind)
    kind = re.sub(r"\(after [^)]*\)$", "(after …)", kind)
    kind = re.sub(r"^(value is not valid UTF-8 JSON):.*$", r"\1", kind)
    return re.sub(r"^message is \d+ bytes", "message is … bytes", kind)


@dataclass(slots=True)
class Rejected:
    """Invalid lines of one kind."""

    count: int = 0
    example: str = ""
    lines: list[int] = field(default_factory=list)
    """The first few line numbers."""


@dataclass(slots=True)
class Summary:
    """What a replay did."""

    path: str
    topic: str
    lines: int = 0
    sent: int = 0
    invalid: dict[str, Rejected] = field(default_factory=dict)
    elapsed_s: float = 0.0
    checked_only: bool = False
    group: str = ""
    caught_up: bool | None = None
    """With ``wait``: whether the group caught up in time (None: not asked)."""
    waited_s: float = 0.0

    @property
    def rejected(self) -> int:
        """Invalid lines, not sent."""
        return sum(r.count for r in self.invalid.values())

    def reject(self, line: int, reason: str) -> None:
        """Count one invalid line."""
        r = self.invalid.setdefault(reason_kind(reason), Rejected(example=reason))
        r.count += 1
        if len(r.lines) < 10:
            r.lines.append(line)

    def render(self, rejects: str | None = None) -> str:
        """The summary printed at the end."""
        rate = self.lines / self.elapsed_s if self.elapsed_s > 0 else 0.0
        verb = "checked" if self.checked_only else "replayed"
        out = [f"{verb} {self.path}: {self.lines:,} lines in {self.elapsed_s:.1f} s "
               f"({rate:,.0f}/s)"]
        if self.checked_only:
            out.append(f"  valid    {self.lines - self.rejected:>12,} (nothing sent: --check)")
        else:
            out.append(f"  sent     {self.sent:>12,} to topic {self.topic}")
        where = f", written to {rejects}" if rejects else ""
        out.append(f"  invalid  {self.rejected:>12,} (not sent{where})")
        for kind, r in sorted(self.invalid.items(), key=lambda kv: -kv[1].count):
            more = ", …" if r.count > len(r.lines) else ""
            word = "line" if r.count == 1 else "lines"
            out.append(f"    {r.count:>10,}  {kind} ({word} {', '.join(map(str, r.lines))}{more})")
            if r.example != kind:
                out.append(f"                e.g. line {r.lines[0]}: {r.example}")
        if self.caught_up is not None:
            state = "caught up" if self.caught_up else "NOT caught up (timed out)"
            out.append(f"  workers  group {self.group} {state} after {self.waited_s:.1f} s")
        return "\n".join(out)


async def replay(settings: Settings, opts: ReplayOptions,
                 progress_out: IO[str] | None = None) -> Summary:
    """Validate and produce every line of ``opts.path``; see the module docstring."""
    from stream.produce import BatchSender, make_replay_producer

    src = open_events(opts.path, opts.fmt, opts.mapping, opts.default_type, opts.tz,
                      opts.encoding)
    summary = Summary(opts.path, settings.events_topic, checked_only=opts.check,
                      group=settings.group)
    rejects = open(opts.rejects, "wb") if opts.rejects else None  # noqa: SIM115
    producer: Any = None
    try:
        sender = None
        if not opts.check:
            await ensure_topics(settings)
            producer = make_replay_producer(settings)
            await producer.start()
            sender = BatchSender(producer, settings.events_topic,
                                 list(await producer.partitions_for(settings.events_topic)))
        progress = Progress(src.size, progress_out)
        try:
            await _send_all(src, opts, settings, summary, sender, rejects, progress)
            if sender is not None:
                await sender.flush()
                summary.sent = sender.acked
        except KafkaError as exc:
            acked = sender.acked if sender is not None else 0
            raise SegmenterError(
                f"the broker failed after {acked:,} events were acknowledged (of "
                f"{summary.lines:,} lines read): {exc!r}") from exc
        progress.show(src.position(), summary.lines, summary.rejected, force=True)
        progress.done()
        summary.elapsed_s = time.monotonic() - progress.started
        if opts.wait and sender is not None:
            started = time.monotonic()
            summary.caught_up = await wait_caught_up(settings, sender.ends, opts.wait_timeout,
                                                     progress)
            summary.waited_s = time.monotonic() - started
    finally:
        src.close()
        if rejects is not None:
            rejects.close()
        if producer is not None:
            await producer.stop()
    return summary


async def _send_all(src: EventFile, opts: ReplayOptions, settings: Settings,
                    summary: Summary, sender: Any, rejects: IO[bytes] | None,
                    progress: Progress) -> None:
    # Lines are validated in a helper process, a chunk at a time, while this one reads the
    # next chunk and produces the one before: validation is the largest cost per event.
    validator = Validator(True, settings.max_future_s)
    await validator.start()
    paced = _Pace(opts.rate, sender)
    try:
        prev: tuple[list[Line], asyncio.Future[tuple[list[str], dict[int, str]]]] | None = None
        chunks = _chunks(src.lines(), _CHUNK)
        while True:
            chunk = next(chunks, None)
            results = await prev[1] if prev is not None else None
            task = None if chunk is None else asyncio.ensure_future(
                validator.customer_ids([v for _, v, _, _ in chunk]))
            if prev is not None and results is not None:
                ids, reasons = results
                for i, (n, value, reason, source) in enumerate(prev[0]):
                    reason = reason or reasons.get(i)
                    if reason is not None:
                        summary.reject(n, reason)
                        if rejects is not None:
                            rejects.write(orjson.dumps({"line": n, "reason": reason,
                                                        "input": source_text(source)}) + b"\n")
                    elif sender is not None and value is not None:
                        sender.add(ids[i].encode(), value)
                        if sender.full:
                            await sender.send_full()
                    summary.lines += 1
                    if paced.step and summary.lines % paced.step == 0:
                        await paced.wait(summary.lines)
                progress.show(src.position(), summary.lines, summary.rejected)
            if task is None or chunk is None:
                return
            prev = (chunk, task)
    finally:
        validator.close()


_CHUNK = 4096  # lines per validation call


def _chunks(lines: Iterator[Line], size: int) -> Iterator[list[Line]]:
    chunk: list[Line] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _Pace:
    """``--rate``: sleeps while ahead of the rate (what was read goes out first)."""

    def __init__(self, rate: float, sender: Any) -> None:
        self.rate, self.sender = rate, sender
        self.step = max(1, int(rate / 20)) if rate > 0 else 0
        self.started = time.monotonic()

    async def wait(self, done: int) -> None:
        ahead = done / self.rate - (time.monotonic() - self.started)
        if ahead > 0:
            if self.sender is not None:
                await self.sender.flush()
            await asyncio.sleep(ahead)


async def wait_caught_up(settings: Settings, ends: Mapping[int, int], timeout: float,
                         progress: Progress) -> bool:
    """Wait until the group has committed, on every partition, past the end offsets read
    when the replay finished and past ``ends`` (the offsets after the events it sent);
    False when ``timeout`` (> 0) passed first."""
    reader = LagReader(settings.kafka, settings.group, settings.events_topic,
                       kafka_options(settings))
    await reader.start()
    started = time.monotonic()
    try:
        # End offsets as the lag reader reads them (on the embedded broker also Fetch high
        # watermarks, since its ListOffsets can answer low after batched produce), and never
        # below what our acks said.
        targets = {r.partition: max(r.end, ends.get(r.partition, 0))
                   for r in await reader.read()}
        for p, end in ends.items():
            targets[p] = max(targets.get(p, 0), end)
        shown = 0.0
        while True:
            rows = {r.partition: r.committed or 0 for r in await reader.read()}
            behind = sum(max(0, end - rows.get(p, 0)) for p, end in targets.items())
            if not behind:
                return True
            now = time.monotonic()
            if timeout and now - started >= timeout:
                return False
            if now - shown >= (1.0 if progress.tty else 5.0):
                shown = now
                progress.note(f"waiting for group {settings.group}: {behind:,} events to go "
                              f"({now - started:.0f} s)")
            await asyncio.sleep(0.5)
    finally:
        await reader.close()

