"""Behavioral events: the input contract of SPEC §1, parsed and validated.

Every rule of the contract lives here so that a message is either a fully
valid :class:`Event` or an :class:`InvalidEvent` with a human-readable reason.

Examples
--------
>>> e = parse_event(b'{"event_id": "e1", "customer_id": "c1", "type": "purchase",'
...                 b' "timestamp": "2026-01-01T20:00:00+01:00",'
...                 b' "properties": {"amount": 12.5, "device": "mobile"}}', key=b"c1")
>>> (e.customer_id, e.type, e.ts_ms, e.local_hour, e.amount, e.device)
('c1', 'purchase', 1767294000000, 20, 12.5, 'mobile')
>>> parse_event(b'{"event_id": "e1"}', key=None)
Traceback (most recent call last):
...
models.events.InvalidEvent: missing field 'customer_id'
"""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime
from typing import NamedTuple

import orjson

from models.tracking import from_tracking

MAX_EVENT_BYTES = 64 * 1024
"""Largest accepted message value (SPEC §1)."""

KNOWN_TYPES = frozenset(
    {
        "page_view",
        "product_view",
        "search",
        "add_to_cart",
        "remove_from_cart",
        "checkout",
        "purchase",
        "session_start",
        "identify",
    }
)
"""Event types that feed features; other types are accepted, counted and ignored."""

MIN_TS_MS = 0
"""Earliest accepted event time: the Unix epoch (backfills of old history are normal)."""
MAX_TS_MS = 253_402_300_800_000
"""First event time refused whatever the clock: year 10000, past four-digit ISO-8601 years."""
DEFAULT_MAX_FUTURE_S = 86_400.0
"""Default of how far ahead of the wall clock an event time may be (clock skew), seconds."""
_STR_PROPS = frozenset(("currency", "category", "product_id", "device", "channel", "region"))


class InvalidEvent(ValueError):
    """A message that breaks the event contract; ``str()`` is the reason."""


# Events are NamedTuples rather than frozen dataclasses: equally immutable, but built several
# times faster, which matters at tens of thousands of events per second.
class Traits(NamedTuple):
    """Demographic traits carried by an ``identify`` event."""

    age: float | None = None
    """Age in years."""
    gender: str | None = None
    """Self-described gender, free text."""
    income: float | None = None
    """Yearly income in the shop's currency."""
    household_size: float | None = None
    """Number of people in the household."""
    interests: tuple[str, ...] = ()
    """Declared interests."""


class Event(NamedTuple):
    """One validated behavioral event."""

    event_id: str
    """Unique id; a re-sent event with the same id changes nothing."""
    customer_id: str
    """Opaque customer id, never interpreted."""
    type: str
    """Event type; see :data:`KNOWN_TYPES`."""
    ts_ms: int
    """Event time, epoch milliseconds (UTC)."""
    local_hour: int
    """Hour of day in the sender's local time (UTC when no offset was given)."""
    amount: float = 0.0
    """Order amount of a ``purchase`` (0 otherwise)."""
    category: str | None = None
    """Product category."""
    device: str | None = None
    """Device class, lower-cased (``mobile``, ``desktop``, ``tablet``, ...)."""
    channel: str | None = None
    """Acquisition channel, lower-cased (``organic``, ``paid``, ``email``, ...)."""
    country: str | None = None
    """ISO 3166 alpha-2 country code, upper-cased."""
    region: str | None = None
    """Free-text region."""
    traits: Traits | None = None
    """Demographics from an ``identify`` event."""
    id_hash: int = 0
    """:func:`event_id_hash` of ``event_id`` (set by :func:`parse_event`, which may run in
    a helper process; 0: not computed, the consumer hashes the id itself)."""
    anonymous_id: str | None = None
    """The visitor's anonymous id, if given (§1.2); without a customer id, also ``customer_id``."""


def event_id_hash(event_id: str) -> int:
    """Stable 48-bit hash of an event id, kept in customer states (so it must never change):
    the low 48 bits of the 64-bit one of schemas before 7 (older ids read back masked). A
    collision with one of a customer's ~20 remembered ids: 1 in ~10^13 events.

    >>> event_id_hash("e-1"), event_id_hash("e-1") != event_id_hash("e-2")
    (265305658389297, True)
    """
    d = hashlib.blake2b(event_id.encode(), digest_size=8).digest()
    return int.from_bytes(d[:6], "little")


def _str_field(obj: dict[str, object], name: str, max_len: int = 128) -> str:
    if name not in obj:
        raise InvalidEvent(f"missing field {name!r}")
    value = obj[name]
    if not isinstance(value, str):
        raise InvalidEvent(f"field {name!r} must be a string, got {type(value).__name__}")
    if not 1 <= len(value) <= max_len:
        raise InvalidEvent(f"field {name!r} must have 1 to {max_len} characters")
    return value


def _number(value: object, where: str, lo: float = 0.0, hi: float = math.inf) -> float:
    # bool is an int subclass; true/false is never a valid number here.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidEvent(f"{where} must be a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number) or not lo <= number <= hi:
        raise InvalidEvent(f"{where} must be a finite number in [{lo:g}, {hi:g}], got {value!r}")
    return number


def latest_allowed_ms(now_ms: int, max_future_s: float = DEFAULT_MAX_FUTURE_S) -> int:
    """The ``max_ts_ms`` of :func:`parse_event` for a wall clock reading ``now_ms``.

    Callers read the clock once per batch or request, not once per event.

    >>> latest_allowed_ms(1_767_225_600_000, 86_400)
    1767312000000
    """
    return min(MAX_TS_MS - 1, now_ms + int(max_future_s * 1000))


def _utc(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(value: object, max_ts_ms: int | None = None) -> tuple[int, int]:
    """Return ``(epoch_ms, local_hour)`` from an ISO-8601 string with offset or epoch ms.

    Any time from the Unix epoch on is valid; with ``max_ts_ms`` (see
    :func:`latest_allowed_ms`), a later time is not.

    >>> parse_timestamp("2026-03-01T08:30:00Z")
    (1772353800000, 8)
    >>> parse_timestamp(1772353800000)
    (1772353800000, 8)
    >>> parse_timestamp("1997-01-01T09:00:00+01:00")
    (852105600000, 9)
    >>> parse_timestamp("2026-03-01T08:30:00")
    Traceback (most recent call last):
    ...
    models.events.InvalidEvent: timestamp '2026-03-01T08:30:00' has no UTC offset
    >>> parse_timestamp("1969-12-31T23:00:00+00:00")
    Traceback (most recent call last):
    ...
    models.events.InvalidEvent: timestamp '1969-12-31T23:00:00+00:00' is before the Unix epoch \
(1970-01-01T00:00:00Z)
    >>> parse_timestamp("2026-03-02T08:30:00Z", max_ts_ms=latest_allowed_ms(1772353800000, 3600))
    Traceback (most recent call last):
    ...
    models.events.InvalidEvent: timestamp '2026-03-02T08:30:00Z' is ahead of the clock by more \
than SEGMENTER_MAX_FUTURE_S (after 2026-03-01T09:30:00Z)
    """
    if isinstance(value, bool):
        raise InvalidEvent("timestamp must be an ISO-8601 string or epoch milliseconds")
    if isinstance(value, int):
        ts_ms = value
        local_hour = (ts_ms // 3_600_000) % 24
    elif isinstance(value, str) and len(value) <= 64:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidEvent(f"timestamp {value!r} is not ISO-8601") from None
        if parsed.tzinfo is None:  # fromisoformat gives a fixed-offset timezone or none
            raise InvalidEvent(f"timestamp {value!r} has no UTC offset")
        seconds = parsed.timestamp()
        # checked before rounding: int() rounds -0.5 ms up to the epoch itself
        ts_ms = int(seconds * 1000) if seconds >= 0 else -1
        local_hour = parsed.hour
    else:
        raise InvalidEvent("timestamp must be an ISO-8601 string or epoch milliseconds")
    if ts_ms < MIN_TS_MS:
        raise InvalidEvent(f"timestamp {value!r} is before the Unix epoch (1970-01-01T00:00:00Z)")
    if ts_ms >= MAX_TS_MS:
        raise InvalidEvent(f"timestamp {value!r} is after year 9999")
    if max_ts_ms is not None and ts_ms > max_ts_ms:
        raise InvalidEvent(f"timestamp {value!r} is ahead of the clock by more than "
                           f"SEGMENTER_MAX_FUTURE_S (after {_utc(max_ts_ms)})")
    return ts_ms, int(local_hour)


def _traits(raw: object) -> Traits:
    if not isinstance(raw, dict):
        raise InvalidEvent("field 'traits' must be an object")
    age = raw.get("age")
    income = raw.get("income")
    household = raw.get("household_size")
    gender = raw.get("gender")
    interests = raw.get("interests", [])
    if gender is not None and not isinstance(gender, str):
        raise InvalidEvent("traits.gender must be a string")
    if not isinstance(interests, list) or not all(isinstance(i, str) for i in interests):
        raise InvalidEvent("traits.interests must be a list of strings")
    return Traits(
        age=None if age is None else _number(age, "traits.age", 0, 130),
        gender=gender,
        income=None if income is None else _number(income, "traits.income"),
        household_size=None
        if household is None
        else _number(household, "traits.household_size", 1, 50),
        interests=tuple(i[:64] for i in interests[:32]),
    )


def parse_event(value: bytes | None, key: bytes | None, *, max_ts_ms: int | None = None
                ) -> Event:
    """Parse and validate one Kafka message; raise :class:`InvalidEvent` with the reason.

    ``max_ts_ms`` is the latest event time accepted (:func:`latest_allowed_ms` of a clock
    reading); None: no bound but year 9999.
    """
    if value is None:
        raise InvalidEvent("message has no value (tombstone)")
    if len(value) > MAX_EVENT_BYTES:
        raise InvalidEvent(f"message is {len(value)} bytes, over the {MAX_EVENT_BYTES} limit")
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"value is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidEvent(f"value must be a JSON object, got {type(obj).__name__}")
    if "event_id" not in obj and "messageId" in obj:  # one lookup for our own format
        try:  # Segment / RudderStack: mapped, then validated as ours
            obj = from_tracking(obj)
        except ValueError as exc:
            raise InvalidEvent(str(exc)) from None
    event_id = _str_field(obj, "event_id")
    anonymous_id = obj.get("anonymous_id")
    if anonymous_id is not None:
        anonymous_id = _str_field(obj, "anonymous_id")
    # Without a customer id the profile is keyed by the anonymous id (contract §1.2).
    customer_id = anonymous_id if anonymous_id is not None and obj.get(
        "customer_id") is None else _str_field(obj, "customer_id")
    etype = _str_field(obj, "type", 64)
    if "timestamp" not in obj:
        raise InvalidEvent("missing field 'timestamp'")
    ts_ms, local_hour = parse_timestamp(obj["timestamp"], max_ts_ms)
    if key is not None and key != customer_id.encode():
        # A wrong key puts the customer on another partition and breaks per-customer order.
        raise InvalidEvent("message key does not equal " + (
            "customer_id" if customer_id is not anonymous_id else "anonymous_id (no customer_id)"))

    props = {} if obj.get("properties") is None else obj["properties"]
    if not isinstance(props, dict):  # false, 0, "" or [] too: not an object
        raise InvalidEvent("field 'properties' must be an object")
    for name, v in props.items():
        if name in _STR_PROPS and v is not None and not isinstance(v, str):
            raise InvalidEvent(f"properties.{name} must be a string")
    amount = 0.0
    if etype == "purchase":
        if props.get("amount") is None:
            raise InvalidEvent("purchase without properties.amount")
        amount = _number(props["amount"], "properties.amount")
    elif props.get("amount") is not None:
        _number(props["amount"], "properties.amount")
    country = props.get("country")
    if country is not None:
        if not (isinstance(country, str) and len(country) == 2 and country.isascii()
                and country.isalpha()):
            raise InvalidEvent("properties.country must be an ISO 3166 alpha-2 code")
        country = country.upper()
    traits = None
    if obj.get("traits") is not None:
        traits = _traits(obj["traits"])

    def low(name: str) -> str | None:
        v = props.get(name)
        return v.lower()[:32] if isinstance(v, str) and v else None

    category = props.get("category")
    region = props.get("region")
    return Event(
        event_id,
        customer_id,
        etype,
        ts_ms,
        local_hour,
        amount,
        category[:64] if isinstance(category, str) and category else None,
        low("device"),
        low("channel"),
        country,
        region[:64] if isinstance(region, str) and region else None,
        traits,
        event_id_hash(event_id),
        anonymous_id,
    )
