"""The Segment / RudderStack format on the events topic (contract §1.3) and anonymous visitors
(§1.2): realistic payloads written from the public specifications (Segment Spec: Common
Fields, Track, Page, Identify, Alias, E-commerce v2; RudderStack's event spec), mapped and
validated as the worker does it, in the helper process's path too."""

from __future__ import annotations

import copy
import marshal
from typing import Any

import orjson
import pytest

from models.events import InvalidEvent, parse_event
from models.records import DeadLetter, Record, parse_records
from stream.parsing import Validator, decode, validate

ANON, USER = "507f191e810c19729de860ea", "97980cfea0067"

# Segment Spec, Common Fields: the context analytics-ios sends (a newsletter's campaign).
CONTEXT: dict[str, Any] = {
    "active": True,
    "app": {"name": "InitechGlobal", "version": "545", "build": "3.0.1.545"},
    "campaign": {"name": "TPS Innovation Newsletter", "source": "Newsletter",
                 "medium": "email", "term": "tps reports", "content": "image link"},
    "device": {"id": "B5372DB0-C21E-11E4-8DFC-AA07A5B093DB", "manufacturer": "Apple",
               "model": "iPhone7,2", "name": "maguro", "type": "ios"},
    "ip": "8.8.8.8",
    "library": {"name": "analytics-ios", "version": "4.1.6"},
    "locale": "nl-NL",
    "location": {"city": "Amsterdam", "country": "NL", "region": "Noord-Holland",
                 "latitude": 52.37, "longitude": 4.89, "speed": 0},
    "os": {"name": "iPhone OS", "version": "8.1.3"},
    "screen": {"width": 320, "height": 568, "density": 2},
    "timezone": "Europe/Amsterdam",
    "userAgent": "Mozilla/5.0 (iPhone; CPU iPhone OS 9_1 like Mac OS X) AppleWebKit/601.1.46",
}
GAMES = [
    {"product_id": "507f1f77bcf86cd799439011", "sku": "45790-32", "name": "Monopoly: 3rd Edition",
     "price": 19, "quantity": 1, "category": "Games",
     "url": "https://www.example.com/product/path", "image_url": "https:///www.example.com/p.jpg"},
    {"product_id": "505bd76785ebb509fc183733", "sku": "46493-32", "name": "Uno Card Game",
     "price": 3, "quantity": 2, "category": "Games"},
]


def msg(n: int, call: str, *, event: str | None = None, user: str | None = None,
        props: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """One message as Segment delivers it: the common fields, then the call's own."""
    m: dict[str, Any] = {
        "anonymousId": ANON, "context": copy.deepcopy(CONTEXT),
        "integrations": {"All": True, "Mixpanel": False},
        "messageId": f"022bb90c-bbac-11e4-8dfc-aa07a5b0{n:04d}",
        "receivedAt": f"2026-03-10T19:0{n}:31.909Z", "sentAt": f"2026-03-10T19:0{n}:31.581Z",
        "timestamp": f"2026-03-10T19:0{n}:31.505Z", "type": call, "userId": user,
        "version": 2, **extra}
    if event is not None:
        m["event"] = event
    if props is not None:
        m["properties"] = props
    return m


def funnel() -> list[dict[str, Any]]:
    """An anonymous visitor's way to an order, then the sign-up (E-commerce v2 payloads)."""
    return [
        msg(0, "page", name="Home", props={"title": "Welcome | Initech",
                                           "url": "http://www.initech.com", "path": "/"}),
        msg(1, "track", event="Products Searched", props={"query": "board games"}),
        msg(2, "track", event="Product Viewed", props={
            "product_id": "507f1f77bcf86cd799439011", "sku": "G-32", "category": "Games",
            "name": "Monopoly: 3rd Edition", "brand": "Hasbro", "variant": "200 pieces",
            "price": 18.99, "quantity": 1, "coupon": "MAYDEALS", "currency": "usd",
            "position": 3, "value": 18.99, "url": "https://www.example.com/product/path"}),
        msg(3, "track", event="Product Added", props={
            "cart_id": "skdjsidjsdkdj29j", "product_id": "507f1f77bcf86cd799439011",
            "sku": "G-32", "category": "Games", "name": "Monopoly: 3rd Edition",
            "brand": "Hasbro", "price": 18.99, "quantity": 1}),
        msg(4, "track", event="Checkout Started", props={
            "order_id": "50314b8e9bcf000000000000", "affiliation": "Google Store",
            "value": 30, "revenue": 25.00, "shipping": 3, "tax": 2, "discount": 2.5,
            "coupon": "hasbros", "currency": "USD", "products": GAMES}),
        msg(5, "track", event="Order Completed", props={
            "checkout_id": "fksdjfsdjfisjf9sdfjsd9f", "order_id": "50314b8e9bcf000000000000",
            "affiliation": "Google Store", "total": 27.50, "subtotal": 22.50, "revenue": 25.00,
            "shipping": 3, "tax": 2, "discount": 2.5, "coupon": "hasbros", "currency": "USD",
            "products": GAMES}),
        msg(6, "identify", user=USER, traits={
            "name": "Peter Gibbons", "email": "peter@example.com", "plan": "premium",
            "logins": 5, "birthday": "1985-03-11", "gender": "male", "income": 52000,
            "address": {"city": "Amsterdam", "country": "NL"}}),
    ]


def key(m: dict[str, Any]) -> bytes:
    """RudderStack's and Segment's Kafka destinations key by userId, else anonymousId."""
    return (m.get("userId") or m["anonymousId"]).encode()


def test_a_funnel_maps_to_segmenter_events() -> None:
    events = [parse_event(orjson.dumps(m), key(m)) for m in funnel()]
    assert [e.type for e in events] == ["page_view", "search", "product_view", "add_to_cart",
                                        "checkout", "purchase", "identify"]
    assert events[0].event_id == "022bb90c-bbac-11e4-8dfc-aa07a5b00000"
    # anonymous until the identify, which carries both ids (and is keyed by the user's)
    assert {(e.customer_id, e.anonymous_id) for e in events[:6]} == {(ANON, ANON)}
    assert (events[6].customer_id, events[6].anonymous_id) == (USER, ANON)
    order = events[5]
    assert order.amount == 25.0  # revenue before total
    assert order.ts_ms == 1773169531505 and order.local_hour == 20  # 19:05:31Z in Amsterdam
    assert (order.category, order.device, order.channel, order.country, order.region) == (
        "Games", "mobile", "email", "NL", "Noord-Holland")
    assert events[2].amount == 0.0 and events[2].category == "Games"
    assert events[6].traits is not None
    assert (events[6].traits.age, events[6].traits.gender, events[6].traits.income) == (
        40.0, "male", 52000.0)  # born 1985-03-11: 40 the day before the 41st birthday


def test_the_helper_process_path_gives_the_same_events() -> None:
    values = [orjson.dumps(m) for m in funnel()]
    keys = [key(m) for m in funnel()]
    out = decode(validate(marshal.dumps((values, keys, None))))
    assert out == [parse_event(v, k) for v, k in zip(values, keys, strict=True)]
    assert out[0].anonymous_id == ANON and out[6].traits is not None  # type: ignore[union-attr]


def test_rudderstack_payload() -> None:
    """RudderStack's JavaScript SDK: originalTimestamp, its own top-level ``channel`` (the
    source kind, not a marketing channel), traits in the context, snake-case names."""
    m = {"anonymousId": "5d7f0ee4-8bd5-4c1a-9a3c-1c4a7e0e2a11", "channel": "web",
         "context": {"app": {"name": "RudderLabs JavaScript SDK", "version": "2.48.0"},
                     "library": {"name": "RudderLabs JavaScript SDK", "version": "2.48.0"},
                     "locale": "de-AT", "os": {"name": "", "version": ""},
                     "page": {"path": "/checkout", "referrer": "https://www.google.com/",
                              "title": "Kasse", "url": "https://shop.example.at/checkout"},
                     "screen": {"density": 2}, "traits": {},
                     "userAgentData": {"brands": [], "mobile": False, "platform": "Windows"},
                     "campaign": {"source": "google", "medium": "cpc", "name": "xmas"},
                     "timezone": "Europe/Vienna"},
         "event": "order_completed", "integrations": {"All": True},
         "messageId": "bc9bb6f5-6d1c-44f4-96b7-2a1d3c8b6f3e",
         "originalTimestamp": "2026-12-01T21:15:02.117Z",
         "properties": {"order_id": "A-1001", "currency": "EUR",
                        "products": [{"product_id": "p1", "price": 12.5, "quantity": 2,
                                      "category": "Books"},
                                     {"product_id": "p2", "price": 5, "category": "Music"}]},
         "receivedAt": "2026-12-01T21:15:02.301Z", "request_ip": "[::1]",
         "rudderId": "f3e2c1b0-0000-4000-8000-000000000001",
         "sentAt": "2026-12-01T21:15:02.120Z", "type": "track", "userId": ""}
    e = parse_event(orjson.dumps(m), m["anonymousId"].encode())  # type: ignore[union-attr]
    assert (e.type, e.customer_id, e.amount) == ("purchase", m["anonymousId"], 30.0)
    assert (e.device, e.channel, e.local_hour, e.category) == ("desktop", "paid", 22, "Books")


def test_alias_links_previous_id_and_other_calls() -> None:
    alias = {"type": "alias", "messageId": "m-alias", "previousId": "39239-239239-239239-23923",
             "userId": "507f191e81", "timestamp": "2026-03-10T19:00:00Z"}
    e = parse_event(orjson.dumps(alias), b"507f191e81")
    assert (e.type, e.customer_id, e.anonymous_id) == (
        "alias", "507f191e81", "39239-239239-239239-23923")
    screen = msg(1, "screen", name="Cart")
    assert parse_event(orjson.dumps(screen), ANON.encode()).type == "page_view"
    group = msg(2, "group", groupId="0e8c78ea9d97a7b8185e8632", traits={"name": "Initech"})
    assert parse_event(orjson.dumps(group), ANON.encode()).type == "group"  # ignored type
    promo = msg(3, "track", event="Promotion Viewed", props={"promotion_id": "promo_1"})
    assert parse_event(orjson.dumps(promo), ANON.encode()).type == "Promotion Viewed"


def test_context_edge_cases() -> None:
    m = msg(0, "track", event="Product Viewed", props={"category": "Games"})
    m["context"].update(timezone="Mars/Olympus_Mons", location={"country": "United States"})
    del m["context"]["campaign"], m["context"]["device"]
    e = parse_event(orjson.dumps(m), ANON.encode())
    assert (e.local_hour, e.country, e.channel, e.device) == (19, None, None, None)
    m = msg(0, "page", props={})
    m["context"]["campaign"]["medium"] = "Podcast"  # an unknown medium is kept as given
    m["context"]["device"]["type"] = "android"
    e = parse_event(orjson.dumps(m), ANON.encode())
    assert (e.channel, e.device) == ("podcast", "mobile")


@pytest.mark.parametrize(("change", "reason"), [
    (lambda m: m.pop("event"), "track without field 'event'"),
    (lambda m: m.update(type="capture"), "type 'capture' is not a Segment/RudderStack call"),
    (lambda m: m.update(messageId=42), "field 'messageId' must be a string"),
    (lambda m: m.update(messageId=""), "field 'messageId' must have 1 to 128"),
    (lambda m: m.update(userId=97980), "field 'userId' must be a string"),
    (lambda m: m.update(anonymousId=None), "neither userId nor anonymousId"),
    (lambda m: m.pop("timestamp"), "missing field 'timestamp'"),
    (lambda m: m.update(timestamp="10 March 2026"), "not ISO-8601"),
    (lambda m: m.update(context=[]), "field 'context' must be an object"),
    (lambda m: m.update(properties="x"), "field 'properties' must be an object"),
    (lambda m: m["properties"].update(revenue="25.00"), "properties.revenue must be a finite"),
    (lambda m: m["properties"].update(revenue=-5), "properties.revenue must be a finite"),
    (lambda m: m.update(properties={"order_id": "o"}), "without properties.revenue, total"),
    (lambda m: m.update(properties={"products": [{"price": "9"}]}), "products[0].price"),
    (lambda m: m.update(properties={"revenue": 5, "category": 7}), "category must be a str"),
    (lambda m: m["context"]["location"].update(region=5), "region must be a string"),
])
def test_invalid_messages_have_reasons(change: Any, reason: str) -> None:
    m = funnel()[5]  # Order Completed
    change(m)
    with pytest.raises(InvalidEvent) as info:
        parse_event(orjson.dumps(m), ANON.encode())
    assert reason in str(info.value)


@pytest.mark.parametrize(("traits", "reason"), [
    ({"age": "31"}, "traits.age must be a number"),
    ({"birthday": "sometime"}, "traits.birthday must be an ISO-8601 date"),
    ({"interests": "games"}, "traits.interests must be a list of strings"),
    ([], "field 'traits' must be an object"),
])
def test_invalid_traits(traits: Any, reason: str) -> None:
    m = funnel()[6]
    m["traits"] = traits
    with pytest.raises(InvalidEvent, match=None) as info:
        parse_event(orjson.dumps(m), USER.encode())
    assert reason in str(info.value)


def test_keys_follow_the_contract() -> None:
    """Keyed by userId, or anonymousId without one: a message keyed otherwise would put the
    profile on a partition that does not own it."""
    order, ident = funnel()[5], funnel()[6]
    with pytest.raises(InvalidEvent, match="key does not equal anonymous_id"):
        parse_event(orjson.dumps(order), USER.encode())
    with pytest.raises(InvalidEvent, match="key does not equal customer_id"):
        parse_event(orjson.dumps(ident), ANON.encode())


def test_invalid_ones_become_dead_letters() -> None:
    bad = funnel()[5]
    del bad["properties"]
    good = funnel()[0]
    parsed = parse_records([Record("events", 0, 1, ANON.encode(), orjson.dumps(bad)),
                            Record("events", 0, 2, ANON.encode(), orjson.dumps(good))])
    dead = parsed[0][1]
    assert isinstance(dead, DeadLetter) and "without properties.revenue" in dead.reason
    assert not isinstance(parsed[1][1], DeadLetter)


def native(**over: Any) -> bytes:
    base = {"event_id": "e1", "type": "page_view", "timestamp": "2026-05-01T10:00:00+02:00"}
    return orjson.dumps({**base, **over})


def test_native_anonymous_events() -> None:
    e = parse_event(native(anonymous_id="cookie-1"), b"cookie-1")
    assert (e.customer_id, e.anonymous_id) == ("cookie-1", "cookie-1")
    e = parse_event(native(anonymous_id="cookie-1", customer_id=None), b"cookie-1")
    assert e.customer_id == "cookie-1"
    e = parse_event(native(type="identify", customer_id="c-9", anonymous_id="cookie-1"), b"c-9")
    assert (e.customer_id, e.anonymous_id) == ("c-9", "cookie-1")
    assert parse_event(native(customer_id="c-9"), b"c-9").anonymous_id is None
    with pytest.raises(InvalidEvent, match="missing field 'customer_id'"):
        parse_event(native(), None)
    with pytest.raises(InvalidEvent, match="'anonymous_id' must have 1 to 128"):
        parse_event(native(anonymous_id="x" * 129), None)
    with pytest.raises(InvalidEvent, match="'anonymous_id' must be a string"):
        parse_event(native(anonymous_id=7, customer_id="c"), None)
    with pytest.raises(InvalidEvent, match="key does not equal anonymous_id"):
        parse_event(native(anonymous_id="cookie-1"), b"c-9")


async def test_replay_keys_segment_lines_by_user_else_anonymous_id() -> None:
    """``segmenter replay`` of an export of Segment events: each line keyed as the worker
    expects (userId, else anonymousId)."""
    lines = [orjson.dumps(m) for m in funnel()] + [native(anonymous_id="ck-9"), b"{}"]
    ids, reasons = await Validator(enabled=False).customer_ids(list(lines))
    assert ids == [ANON] * 6 + [USER, "ck-9", ""]
    assert reasons == {8: "missing field 'event_id'"}
