"""The Segment / RudderStack event format (contract §1.3), mapped to Segmenter's own.

Tracking pipelines send ``track``/``page``/``screen``/``identify``/``alias`` calls with
``messageId``, ``userId``, ``anonymousId``, ``timestamp``, ``properties``, ``traits`` and
``context`` (the Segment Spec; RudderStack sends the same). :func:`from_tracking` turns one
into the object of Segmenter's own format (contract §1), which
:func:`models.events.parse_event` then validates by the same rules as any event. The README's
"Segment / RudderStack events" table is this module in prose.

Only a message without ``event_id`` and with ``messageId`` comes here, so Segmenter's own
events pay one dict lookup for it.

Examples
--------
>>> e = from_tracking({"type": "track", "event": "Order Completed", "messageId": "m-1",
...     "userId": "u-7", "anonymousId": "a-3", "timestamp": "2026-01-01T19:00:00.120Z",
...     "properties": {"revenue": 25.0, "currency": "EUR", "products": [{"category": "Books"}]},
...     "context": {"timezone": "Europe/Vienna", "campaign": {"medium": "cpc"},
...                 "device": {"type": "ios"}, "location": {"country": "AT"}}})
>>> e["type"], e["customer_id"], e["anonymous_id"], e["timestamp"]
('purchase', 'u-7', 'a-3', '2026-01-01T20:00:00.120000+01:00')
>>> sorted(e["properties"].items())  # doctest: +NORMALIZE_WHITESPACE
[('amount', 25.0), ('category', 'Books'), ('channel', 'paid'), ('country', 'AT'),
 ('currency', 'EUR'), ('device', 'mobile')]
>>> from_tracking({"type": "track", "messageId": "m-2", "anonymousId": "a-3"})
Traceback (most recent call last):
...
ValueError: track without field 'event'
"""

from __future__ import annotations

import functools
import math
from datetime import UTC, date, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

CALLS = {"page": "page_view", "screen": "page_view", "identify": "identify",
         "alias": "alias", "group": "group"}
"""Segmenter's type of each call type but ``track`` (``group`` is accepted and ignored)."""

TRACKED = {
    "products searched": "search",
    "product viewed": "product_view",
    "product added": "add_to_cart",
    "product removed": "remove_from_cart",
    "checkout started": "checkout",
    "order completed": "purchase",
    "application opened": "session_start",
}
"""Segmenter's type of each e-commerce (and mobile) spec event name, matched ignoring case
and ``_`` for space (``Order Completed``, ``order_completed``); other names are kept as
the type, so they are accepted, counted and ignored unless one is a type of Segmenter's own."""

AMOUNT_FIELDS = ("revenue", "total", "price")
"""Where a purchase's amount is read, first found first; else the products' price x quantity."""

DEVICES = {"ios": "mobile", "android": "mobile", "mobile": "mobile", "phone": "mobile",
           "smartphone": "mobile", "ipados": "tablet", "tablet": "tablet",
           "desktop": "desktop", "macos": "desktop", "windows": "desktop", "linux": "desktop"}
"""``context.device.type`` (an operating system in the Segment Spec) to a device class."""

MEDIUMS = {"cpc": "paid", "ppc": "paid", "paid": "paid", "paidsearch": "paid",
           "paid_search": "paid", "paid-search": "paid", "display": "paid", "cpm": "paid",
           "banner": "paid", "email": "email", "e-mail": "email", "newsletter": "email",
           "social": "social", "social-network": "social", "social-media": "social",
           "sm": "social", "organic": "organic", "referral": "referral", "direct": "direct"}
"""``context.campaign.medium`` (UTM medium) to a channel; other mediums are kept as given."""

_TRAITS = (("age", "age"), ("gender", "gender"), ("income", "income"),
           ("household_size", "household_size"), ("householdSize", "household_size"),
           ("interests", "interests"))


def _id(obj: dict[str, Any], name: str) -> str | None:
    """An id field: absent, null or "" is None; else a string of 1-128 characters."""
    value = obj.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"field {name!r} must be a string, got {type(value).__name__}")
    if len(value) > 128:
        raise ValueError(f"field {name!r} must have 1 to 128 characters")
    return value


def _obj(parent: dict[str, Any], name: str, where: str) -> dict[str, Any]:
    value = parent.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"field {where}{name!r} must be an object")
    return value


def _money(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            math.isfinite(value) and value >= 0):
        raise ValueError(f"{where} must be a finite number >= 0, got {value!r}")
    return float(value)


def _amount(props: dict[str, Any], products: list[Any]) -> float:
    for name in AMOUNT_FIELDS:
        if props.get(name) is not None:
            return _money(props[name], f"properties.{name}")
    if not products:
        raise ValueError("Order Completed without properties.revenue, total, price or "
                         "products")
    total = 0.0
    for i, p in enumerate(products):
        total += _money(p.get("price", 0), f"properties.products[{i}].price") * _money(
            p.get("quantity", 1), f"properties.products[{i}].quantity")
    return total


@functools.lru_cache(maxsize=256)
def _zone(name: str) -> tzinfo | None:
    try:
        return ZoneInfo(name)
    except (ValueError, LookupError, OSError):  # not a zone: the event time stays in UTC
        return None


def _local(ts: object, zone_name: object) -> object:
    """The timestamp in the sender's ``context.timezone`` (Segment sends UTC), so local
    hours are the visitor's; as given when either is unusable."""
    zone = _zone(zone_name) if isinstance(zone_name, str) and len(zone_name) <= 64 else None
    if zone is None or not isinstance(ts, str | int) or isinstance(ts, bool):
        return ts
    try:
        t = (datetime.fromisoformat(ts) if isinstance(ts, str)
             else datetime.fromtimestamp(ts / 1000, UTC))
    except (ValueError, OverflowError, OSError):
        return ts  # the validation says what is wrong with it
    return ts if t.tzinfo is None else t.astimezone(zone).isoformat()


def _age(birthday: object, ts: object) -> int:
    try:
        born = date.fromisoformat(str(birthday)[:10])
        at = (datetime.fromisoformat(ts) if isinstance(ts, str)
              else datetime.fromtimestamp(int(ts) / 1000, UTC)).date()  # type: ignore[call-overload]
    except (ValueError, TypeError, OverflowError, OSError):
        raise ValueError("traits.birthday must be an ISO-8601 date before the event") from None
    return at.year - born.year - ((at.month, at.day) < (born.month, born.day))


def _traits(raw: dict[str, Any], ts: object) -> dict[str, Any]:
    out = {ours: raw[theirs] for theirs, ours in _TRAITS if raw.get(theirs) is not None}
    if "age" not in out and raw.get("birthday") is not None:
        out["age"] = _age(raw["birthday"], ts)
    return out


def _context(props: dict[str, Any], context: dict[str, Any]) -> None:
    """Device, channel and location from ``context`` into ``props`` (Segmenter's names)."""
    device = _obj(context, "device", "context.")
    kind = device.get("type")
    if isinstance(kind, str) and kind:
        props["device"] = DEVICES.get(kind.lower(), kind)
    elif isinstance(ua := context.get("userAgentData"), dict) and isinstance(
            ua.get("mobile"), bool):
        props["device"] = "mobile" if ua["mobile"] else "desktop"
    medium = _obj(context, "campaign", "context.").get("medium")
    if isinstance(medium, str) and medium:
        props["channel"] = MEDIUMS.get(medium.lower(), medium)
    location = _obj(context, "location", "context.")
    country = location.get("country")
    if isinstance(country, str) and len(country) == 2:  # a name ("Austria") is not used
        props["country"] = country
    if location.get("region") is not None:
        props["region"] = location["region"]


def from_tracking(msg: dict[str, Any]) -> dict[str, Any]:
    """Map one Segment / RudderStack message to a Segmenter event object (not yet
    validated: :func:`models.events.parse_event` does that); raise ValueError with the
    reason when the message breaks the format."""
    call = msg.get("type")
    if call == "track":
        name = msg.get("event")
        if not isinstance(name, str) or not name.strip():
            raise ValueError("track without field 'event'")
        etype = TRACKED.get(name.strip().lower().replace("_", " "), name.strip()[:64])
    elif isinstance(call, str) and call in CALLS:
        etype = CALLS[call]
    else:
        raise ValueError(f"type {call!r} is not a Segment/RudderStack call (track, page, "
                         "screen, identify, alias, group)")
    event_id = _id(msg, "messageId")
    if event_id is None:
        raise ValueError("field 'messageId' must have 1 to 128 characters")
    ts = msg.get("timestamp", msg.get("originalTimestamp"))
    context = _obj(msg, "context", "")
    out: dict[str, Any] = {"event_id": event_id, "type": etype}
    if ts is not None:  # else the validation says the timestamp is missing
        out["timestamp"] = _local(ts, context.get("timezone"))
    user, anon = _id(msg, "userId"), _id(msg, "anonymousId")
    if call == "alias":  # the id being linked to userId is previousId
        anon = _id(msg, "previousId") or anon
    if user is not None:
        out["customer_id"] = user
    if anon is not None:
        out["anonymous_id"] = anon
    if user is None and anon is None:
        raise ValueError("neither userId nor anonymousId")
    raw = _obj(msg, "properties", "")
    products = raw.get("products") or []
    if not isinstance(products, list) or not all(isinstance(p, dict) for p in products):
        raise ValueError("properties.products must be a list of objects")
    first = products[0] if products else {}
    props = {name: raw.get(name, first.get(name))
             for name in ("category", "product_id", "currency")
             if raw.get(name, first.get(name)) is not None}
    if etype == "purchase":
        props["amount"] = _amount(raw, products)
    _context(props, context)
    out["properties"] = props
    if etype == "identify":
        traits = msg.get("traits") if msg.get("traits") is not None else context.get("traits")
        if traits is not None:
            if not isinstance(traits, dict):
                raise ValueError("field 'traits' must be an object")
            out["traits"] = _traits(traits, ts)
    return out
