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
