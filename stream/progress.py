"""A progress line on stderr for long commands (``segmenter replay``)."""

from __future__ import annotations

import sys
import time
from typing import IO


class Progress:
    """A progress line on stderr: bytes of the file read, events, rate and ETA; redrawn
    in place on a terminal, else printed every few seconds."""

    def __init__(self, total_bytes: int, out: IO[str] | None = None) -> None:
        self.total, self.out = total_bytes, out or sys.stderr
        self.tty = self.out.isatty()
        self.started = self.last = time.monotonic()

    def show(self, position: int, events: int, invalid: int, force: bool = False) -> None:
        """Redraw (at most 4 times a second on a terminal, every 5 s otherwise)."""
        now = time.monotonic()
        if not force and now - self.last < (0.25 if self.tty else 5.0):
            return
        self.last = now
        elapsed = max(now - self.started, 1e-9)
        done = min(1.0, position / self.total) if self.total else 1.0
        eta = elapsed * (1 - done) / done if done > 0 else 0.0
        bar = "#" * int(done * 24)
        line = (f"{done:4.0%} [{bar:<24}] {position / 1e6:,.1f}/{self.total / 1e6:,.1f} MB  "
                f"{events:,} events  {invalid:,} invalid  {events / elapsed:,.0f}/s  "
                f"ETA {_clock(eta)}")
        self.out.write(f"\r{line}\033[K" if self.tty else line + "\n")
        self.out.flush()

    def note(self, text: str) -> None:
        """A line of its own."""
        self.out.write(("\r\033[K" if self.tty else "") + text + "\n")
        self.out.flush()

    def done(self) -> None:
        """End the progress line."""
        if self.tty:
            self.out.write("\n")
            self.out.flush()


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
