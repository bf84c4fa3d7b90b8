"""The demo shop's session rules (stream/shop.py): whose events its collector passes on, and
which cookie values it accepts."""

from __future__ import annotations

import base64

import orjson
import pytest

from models.events import Event, parse_event
from stream.shop import Session, Sessions


def ev(**ids: str) -> Event:
    """Parsed as the collector parses a page's event (no key)."""
    return parse_event(orjson.dumps({"event_id": "e1", "type": "identify",
                                     "timestamp": 1_767_225_600_000, **ids}), None)


ANON = Session("ck-1", None)
LOGGED_IN = Session("ck-1", "c-9")
BY_URL = Session(None, "c-9")


@pytest.mark.parametrize(("session", "ids", "ok"), [
    (ANON, {"anonymous_id": "ck-1"}, True),
    (ANON, {"anonymous_id": "ck-2"}, False),  # another visitor's
    (ANON, {"customer_id": "c-9", "anonymous_id": "ck-1"}, False),  # a link: the login only
    (ANON, {"customer_id": "c-9"}, False),
    (LOGGED_IN, {"customer_id": "c-9", "anonymous_id": "ck-1"}, True),
    (LOGGED_IN, {"customer_id": "c-9"}, True),
    (LOGGED_IN, {"customer_id": "c-9", "anonymous_id": "ck-2"}, False),  # linking another id
    (LOGGED_IN, {"anonymous_id": "ck-1"}, False),  # logged in: the customer's clicks
    (LOGGED_IN, {"customer_id": "c-8", "anonymous_id": "ck-1"}, False),
    (BY_URL, {"customer_id": "c-9"}, True),
    (BY_URL, {"customer_id": "c-9", "anonymous_id": "ck-1"}, False),  # no anonymous id
])
def test_the_collector_passes_on_its_own_visitors_events_only(
        session: Session, ids: dict[str, str], ok: bool) -> None:
    assert (session.refuses(ev(**ids)) is None) is ok


def test_only_cookies_the_shop_signed_are_sessions() -> None:
    shop, other = Sessions(b"k"), Sessions(b"another key")
    for s in (ANON, LOGGED_IN, BY_URL, Session("ck-ü", "quote\"id/ü")):
        assert shop.session(shop.sign(s)) == s
        assert shop.session(other.sign(s)) is None
    value = shop.sign(LOGGED_IN)
    assert shop.session(value[:-1] + ("0" if value[-1] != "0" else "1")) is None
    # a payload swapped under the same mac, a plain id (the old format), nothing at all
    raw = base64.urlsafe_b64encode(b'["ck-1","c-1"]').decode().rstrip("=")
    assert shop.session(f"{raw}.{value.partition('.')[2]}") is None
    assert shop.session("") is None and shop.session(".") is None
    mac_of = shop._mac
    plain = base64.urlsafe_b64encode(b"c-9").decode().rstrip("=")
    assert shop.session(f"{plain}.{mac_of(plain)}") is None
    empty = base64.urlsafe_b64encode(b"[null,null]").decode().rstrip("=")
    assert shop.session(f"{empty}.{mac_of(empty)}") is None
