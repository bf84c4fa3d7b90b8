"""The demo shop (``GET /demo/shop``): a page personalised on the visitor's learned segment,
their audiences and their traits, read as a real website reads them.

A real site knows who its visitor is from its own session (a login, a signed cookie) and
reads the customer hash ``seg:customer:{<id>}`` on its **server**, in one Redis round trip;
traits and audiences are personal data (contract §4: behind ``SEGMENTER_READ_TOKEN``), so
neither the token nor another customer's data ever reaches a browser. The demo does the same
within one worker:

- the shop signs the visitor's id into an HttpOnly cookie (HMAC; the key is derived from
  ``SEGMENTER_API_TOKEN`` when set, so every worker accepts every worker's cookies, else
  random per process). A visitor without one gets a fresh id. ``?customer=<id>`` opens a
  session for that id only when Segmenter has never seen it (a new visitor choosing a
  name); for an existing customer the page shows the public segment fields only, so a URL
  cannot read anyone's traits;
- ``GET /demo/shop/me`` is the shop's server-side read for the session's own visitor: one
  round trip (``HMGET`` of the customer hash and the audience definitions for their names),
  answering only what the page shows that visitor (401 without a session);
- ``POST /demo/shop/events`` is the shop's server-side collector: the page's clicks, for the
  session's own visitor only (401 without a session, 403 for another id), rate-limited and
  validated as ``POST /events`` is, without a write key in the browser (a key in a page is
  anyone's); so ``SEGMENTER_WRITE_KEY`` can be set and the shop keeps working.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from http.cookies import CookieError, SimpleCookie
from importlib import resources
from typing import TYPE_CHECKING, Any

import orjson
from faust.web import Request, Response, View

from stream.guard import aio

if TYPE_CHECKING:
    import faust

    from stream.ingest import Ingest
    from stream.runtime import Runtime

COOKIE = "segmenter_shop"
FIELDS = ("segment", "segment_name", "audiences", "orders", "categories", "rfm")
"""What the shop's server reads of the customer hash (one ``HMGET``)."""


class Sessions:
    """Visitor ids signed into cookie values (``<base64url id>.<hmac>``).

    >>> s = Sessions(b"k")
    >>> s.visitor(s.sign("c-42 ü")), s.visitor(s.sign("c-42")[:-1] + "x"), s.visitor("x")
    ('c-42 ü', None, None)
    """

    def __init__(self, key: bytes) -> None:
        self.key = key

    @classmethod
    def for_token(cls, api_token: str) -> Sessions:
        """Keyed by the admin token when there is one (all workers agree), else randomly."""
        seed = api_token.encode() if api_token else secrets.token_bytes(32)
        return cls(hashlib.sha256(b"segmenter demo shop\0" + seed).digest())

    def _mac(self, raw: str) -> str:
        return hmac.new(self.key, raw.encode(), hashlib.sha256).hexdigest()[:32]

    def sign(self, cid: str) -> str:
        raw = base64.urlsafe_b64encode(cid.encode()).decode().rstrip("=")
        return f"{raw}.{self._mac(raw)}"

    def visitor(self, value: str) -> str | None:
        """The visitor id of a cookie value; None unless it is one this shop signed."""
        raw, _, mac = value.partition(".")
        if not raw or not hmac.compare_digest(mac, self._mac(raw)):
            return None
        try:
            return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
        except ValueError:
            return None


def personal(fields: dict[str, str | None], names: dict[str, str]) -> dict[str, Any]:
    """What the page shows the visitor of their own data: segment, audiences (with names),
    orders, favourite category, RFM segment.

    >>> personal({"segment": "s1", "audiences": '["a1"]', "orders": "2",
    ...           "categories": '["books", "music"]'}, {"a1": "Repeat buyers"})["audiences"]
    [{'id': 'a1', 'name': 'Repeat buyers'}]
    """
    cats = orjson.loads(fields.get("categories") or "[]")
    return {"segment": fields.get("segment"), "segment_name": fields.get("segment_name"),
            "audiences": [{"id": a, "name": names.get(a, a)}
                          for a in orjson.loads(fields.get("audiences") or "[]")],
            "orders": int(fields.get("orders") or 0),
            "favourite_category": cats[0] if cats else None,
            "rfm": fields.get("rfm") or None}


def _cookie(request: Request) -> str:
    try:
        jar = SimpleCookie(request.headers.get("Cookie", ""))
    except CookieError:
        return ""
    return jar[COOKIE].value if COOKIE in jar else ""


def register(app: faust.App, rt: Runtime, ingest: Ingest) -> None:
    """Add ``/demo/shop``, ``/demo/shop/me`` and ``/demo/shop/events`` to the Faust app."""
    sessions = Sessions.for_token(rt.settings.api_token)
    keys = rt.store.keys

    @app.page("/demo/shop")
    class Shop(View):
        async def get(self, request: Request) -> Response:
            own = sessions.visitor(_cookie(request))
            asked = request.query.get("customer") or None
            visitor, new_session = own, None
            if asked and asked != own:
                seen = await rt.redis.exists(keys.customer(asked), keys.state(asked))
                visitor = asked
                if not seen and 0 < len(asked) <= 128:
                    new_session = asked  # a new visitor names themselves
            elif not own:
                visitor = new_session = "visitor-" + secrets.token_hex(5)
            signed_in = visitor == own or new_session is not None
            page = resources.files("stream").joinpath("static/shop.html").read_text()
            boot = orjson.dumps({"visitor": visitor, "signed_in": signed_in}).decode()
            page = page.replace("__SHOP_BOOT__", boot.replace("<", "\\u003c"))
            headers = {"Cache-Control": "no-store"}
            if new_session is not None:
                headers["Set-Cookie"] = (f"{COOKIE}={sessions.sign(new_session)}; Path=/demo/"
                                         "shop; HttpOnly; SameSite=Lax")
            return self.html(page, headers=headers)

    @app.page("/demo/shop/me")
    class ShopMe(View):
        async def get(self, request: Request) -> Response:
            visitor = sessions.visitor(_cookie(request))
            if visitor is None:
                return self.json({"error": "no shop session"}, status=401)
            async with rt.redis.pipeline(transaction=False) as pipe:
                pipe.hmget(keys.customer(visitor), *FIELDS)
                pipe.hgetall(keys.audiences)
                values, defs = await pipe.execute()
            fields = {f: (v.decode() if isinstance(v, bytes) else v)
                      for f, v in zip(FIELDS, values, strict=True)}
            names = {(a.decode() if isinstance(a, bytes) else a): orjson.loads(d).get("name")
                     or "" for a, d in defs.items()}
            return self.json({"customer_id": visitor, **personal(fields, names)},
                             headers={"Cache-Control": "no-store"})

    @app.page("/demo/shop/events")
    class ShopEvents(View):
        async def post(self, request: Request) -> Response:
            limited = ingest.limited(request)
            if limited is not None:
                return limited
            visitor = sessions.visitor(_cookie(request))
            if visitor is None:
                return self.json({"error": "no shop session"}, status=401)
            if aio(request).content_type != "application/json":  # no cross-site form posts
                return self.json({"error": "send application/json"}, status=415)
            return await ingest.post(request, lambda ev: None if ev.customer_id == visitor
                                     else "the shop sends events of its own visitor only")
