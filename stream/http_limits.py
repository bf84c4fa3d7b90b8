"""Fixed limits of the HTTP API and the checks of its settings (issue #22), read by
``stream.settings`` at start and by the routes (no imports: a helper process reads settings).

>>> public_field_names(" segment, rfm ,"), public_field_names("")
(('segment', 'rfm'), ())
>>> check_http("segment,orders", 0.0, 0, 2048)
Traceback (most recent call last):
...
stream.errors.SettingsError: SEGMENTER_PUBLIC_FIELDS may list only segment, segment_name, \
model_version, updated_at, confidence, explanation, rfm, audiences; not orders (traits need a \
read token)
"""

from __future__ import annotations

from stream.errors import SettingsError

SEGMENT_FIELDS = ("segment", "segment_name", "model_version", "updated_at", "confidence",
                  "explanation", "rfm", "audiences")
"""The segment fields of a customer hash (contract §2) ``SEGMENTER_PUBLIC_FIELDS`` may list;
the first five are public by default. Traits never are (``GET /customers/<id>`` with a read
token serves them)."""
MAX_EVENTS_PER_REQUEST = 500
"""Most events one ``POST /events`` may carry."""


def public_field_names(value: str) -> tuple[str, ...]:
    """``SEGMENTER_PUBLIC_FIELDS`` as a tuple of names."""
    return tuple(f.strip() for f in value.split(",") if f.strip())


def check_http(public_fields: str, events_rate: float, events_burst: int,
               max_body_bytes: int) -> None:
    """Refuse HTTP settings that cannot work, naming the setting."""
    unknown = set(public_field_names(public_fields)) - set(SEGMENT_FIELDS)
    if unknown:
        raise SettingsError(f"SEGMENTER_PUBLIC_FIELDS may list only {', '.join(SEGMENT_FIELDS)}"
                            f"; not {', '.join(sorted(unknown))} (traits need a read token)")
    if events_rate and events_burst < MAX_EVENTS_PER_REQUEST:
        raise SettingsError(f"SEGMENTER_EVENTS_BURST must be at least "
                            f"{MAX_EVENTS_PER_REQUEST} (the most events in one request)")
    if max_body_bytes < 1024:
        raise SettingsError("SEGMENTER_MAX_BODY_BYTES must be at least 1024")
