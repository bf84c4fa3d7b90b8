"""One small exception hierarchy: retriable problems are waited out, fatal ones stop."""

from __future__ import annotations


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
