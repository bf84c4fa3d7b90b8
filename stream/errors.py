"""One small exception hierarchy: retriable problems are waited out, fatal ones stop."""

from __future__ import annotations


def reason(exc: BaseException) -> str:
    """What to log or report about ``exc``: its message, or its ``repr`` when the message is
    empty (``TimeoutError()`` from ``asyncio.wait_for``, a bare ``ConnectionError()``), so a
    warning or a ``/health`` reason never ends in nothing.

    >>> reason(TimeoutError()), reason(ValueError("bad value"))
    ('TimeoutError()', 'bad value')
    """
    return str(exc) or repr(exc)


class SegmenterError(Exception):
    """Base of every Segmenter error."""


class RetriableError(SegmenterError):
    """A dependency is unavailable for now (Redis or Kafka down); retry with back-off."""


class FatalError(SegmenterError):
    """Misconfiguration or an incompatible checkpoint; the worker must stop."""


class SettingsError(FatalError):
    """A ``SEGMENTER_*`` variable has a value that cannot be used."""


class IncompatibleState(FatalError):
    """A customer state in Redis written by a newer Segmenter (a rolling upgrade under way):
    this worker cannot read it without losing what the newer one stored, so it stops, with
    the customer and the schemas named, and is to be replaced by the newer version."""
