"""The demo shop (``GET /demo/shop``): a page personalised on the visitor's learned segment,
their audiences and their traits, read as a real website reads them; the visitor starts
anonymous and may log in, keeping their history (identity stitching, README).

A real site knows who its visitor is from its own session (a cookie id, later a login) and
reads the hash ``seg:customer:{<id>}`` on its **server**, in one Redis round trip; traits
and audiences are personal data (contract §4: behind ``SEGMENTER_READ_TOKEN``), so neither
the token nor another customer's data ever reaches a browser. The demo does the same within
one worker:

- the shop signs the visitor's session into an HttpOnly cookie (HMAC; the key is derived
  from ``SEGMENTER_API_TOKEN`` when set, so every worker accepts every worker's cookies,
  else random per process). A visitor without one gets an anonymous id ``ck-<random>`` (a
  prefix the shop never accepts as a customer id, so the two cannot meet): their clicks are
  events with ``anonymous_id`` only, building their profile keyed by it. ``?customer=<id>``
  opens a customer session for that id only when Segmenter has never seen it (a new visitor
  choosing a name); for an existing customer the page shows the public segment fields only,
  so a URL cannot read anyone's traits;
- ``POST /demo/shop/login`` logs an anonymous session in as a customer id by the same rule
  (an id Segmenter has not seen, or the session's own: the demo has no passwords, so
  nobody logs in as someone else and reads their traits). It sends an ``identify`` with
  both ids through the collector's path below (validated, rate-limited, produced keyed by
  the customer id), then re-signs the session with both ids: the worker merges the
  anonymous profile into the customer's once, and the page reads the customer's. The pair
  is claimed first (``SET NX`` per id), so two log-ins racing cannot link one anonymous id
  to two customers, or two visitors to one customer;
- ``POST /demo/shop/logout`` ends it: a new anonymous id in a fresh cookie, a new visitor
  (the old ids stay linked in Segmenter, the page no longer reads them);
- ``GET /demo/shop/me`` is the shop's server-side read for the session's own visitor (the
  customer id once logged in, else the anonymous id): one round trip (``HMGET`` of the
  hash and the audience definitions for their names), answering only what the page shows
  that visitor (401 without a session);
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
import time
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from importlib import resources
from typing import TYPE_CHECKING, Any

import orjson
from faust.web import Request, Response, View

from stream.guard import aio, error, json_response

if TYPE_CHECKING:
    import faust

    from models.events import Event
    from stream.ingest import Ingest
    from stream.runtime import Runtime

COOKIE = "segmenter_shop"
ANONYMOUS = "ck-"
"""The prefix of the shop's anonymous ids, never accepted as a customer id."""
FIELDS = ("segment", "segment_name", "confidence", "explanation", "audiences", "orders",
          "events", "categories", "rfm")
"""What the shop's server reads of the visitor's hash (one ``HMGET``)."""
CLAIM_TTL_S = 86_400
"""How long a log-in's claims hold (:func:`register`'s ``claim``): by then the identify has
long made the customer id one Segmenter has seen, which no other log-in may take."""


@dataclass(frozen=True, slots=True)
class Session:
    """A shop visitor: an anonymous id, a customer id once logged in (or opened by URL).

    >>> Session("ck-1", None).visitor, Session("ck-1", "c-9").visitor
    ('ck-1', 'c-9')
    """

    anonymous_id: str | None
    customer_id: str | None

    @property
    def visitor(self) -> str:
        """Whose profile the page shows and the clicks build (the customer's once known)."""
        return self.customer_id or self.anonymous_id or ""

    def refuses(self, ev: Event) -> str | None:
        """Why the collector refuses an event (None: it is this visitor's own, with no other
        anonymous id than the session's).

        >>> from models.events import Event
        >>> s = Session("ck-1", "c-9")
        >>> s.refuses(Event("e", "c-9", "identify", 0, 0, anonymous_id="ck-1")) is None
        True
        >>> Session("ck-2", None).refuses(Event("e", "c-9", "identify", 0, 0,
        ...                                     anonymous_id="ck-2"))
        'the shop sends events of its own visitor only'
        """
        if ev.customer_id == self.visitor and ev.anonymous_id in (None, self.anonymous_id):
            return None
        return "the shop sends events of its own visitor only"


class Sessions:
    """Sessions signed into cookie values (``<base64url JSON>.<hmac>``).

    >>> s = Sessions(b"k")
    >>> s.session(s.sign(Session("ck-1", "c-42 ü"))), s.session(s.sign(Session("a", None))[:-1])
    (Session(anonymous_id='ck-1', customer_id='c-42 ü'), None)
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

    def sign(self, session: Session) -> str:
        payload = orjson.dumps([session.anonymous_id, session.customer_id])
        raw = base64.urlsafe_b64encode(payload).decode().rstrip("=")
        return f"{raw}.{self._mac(raw)}"

    def session(self, value: str) -> Session | None:
        """The session of a cookie value; None unless it is one this shop signed."""
        raw, _, mac = value.partition(".")
        if not raw or not hmac.compare_digest(mac, self._mac(raw)):
            return None
        try:
            anon, cid = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        except ValueError:
            return None
        return Session(anon, cid) if anon or cid else None

    def cookie(self, session: Session) -> dict[str, str]:
        return {"Set-Cookie": f"{COOKIE}={self.sign(session)}; Path=/demo/shop; HttpOnly; "
                              "SameSite=Lax"}


def personal(fields: dict[str, str | None], names: dict[str, str]) -> dict[str, Any]:
    """What the page shows the visitor of their own data: segment, audiences (with names),
    orders, events, favourite category, RFM segment.

    >>> personal({"segment": "s1", "audiences": '["a1"]', "orders": "2",
    ...           "categories": '["books", "music"]'}, {"a1": "Repeat buyers"})["audiences"]
    [{'id': 'a1', 'name': 'Repeat buyers'}]
    """
    cats = orjson.loads(fields.get("categories") or "[]")
    confidence, name = fields.get("confidence"), fields.get("segment_name") or ""
    return {"segment": fields.get("segment"), "segment_name": fields.get("segment_name"),
            "confidence": float(confidence) if confidence else None,
            "explanation": fields.get("explanation", name.lower()) or None,
            "audiences": [{"id": a, "name": names.get(a, a)}
                          for a in orjson.loads(fields.get("audiences") or "[]")],
            "orders": int(fields.get("orders") or 0),
            "events": int(fields.get("events") or 0),
            "favourite_category": cats[0] if cats else None,
            "rfm": fields.get("rfm") or None}


def _cookie(request: Request) -> str:
    try:
        jar = SimpleCookie(request.headers.get("Cookie", ""))
    except CookieError:
        return ""
    return jar[COOKIE].value if COOKIE in jar else ""


def register(app: faust.App, rt: Runtime, ingest: Ingest) -> None:
    """Add ``/demo/shop`` and its ``/me``, ``/events``, ``/login`` and ``/logout`` to the
    Faust app."""
    sessions = Sessions.for_token(rt.settings.api_token)
    keys = rt.store.keys

    async def opens(cid: str) -> bool:
        """Whether a URL or a login may open a session for ``cid``: an id the shop may give
        a customer, and one Segmenter has never seen (no passwords in a demo)."""
        return (0 < len(cid) <= 128 and not cid.startswith(ANONYMOUS)
                and not await rt.redis.exists(keys.customer(cid), keys.state(cid)))

    @app.page("/demo/shop")
    class Shop(View):
        async def get(self, request: Request) -> Response:
            own = sessions.session(_cookie(request))
            asked = request.query.get("customer") or None
            session, new = own, None
            if asked and (own is None or asked != own.visitor):
                new = session = Session(None, asked) if await opens(asked) else None
            elif own is None:  # a new visitor: anonymous until they log in
                new = session = Session(ANONYMOUS + secrets.token_hex(8), None)
            page = resources.files("stream").joinpath("static/shop.html").read_text()
            boot = orjson.dumps({
                "visitor": session.visitor if session else asked,
                "signed_in": session is not None,
                "customer_id": session.customer_id if session else None,
                "anonymous_id": session.anonymous_id if session else None}).decode()
            page = page.replace("__SHOP_BOOT__", boot.replace("<", "\\u003c"))
            headers = {"Cache-Control": "no-store"}
            if new is not None:
                headers.update(sessions.cookie(new))
            return self.html(page, headers=headers)

    @app.page("/demo/shop/me")
    class ShopMe(View):
        async def get(self, request: Request) -> Response:
            session = sessions.session(_cookie(request))
            if session is None:
                return self.json({"error": "no shop session"}, status=401)
            async with rt.redis.pipeline(transaction=False) as pipe:
                pipe.hmget(keys.customer(session.visitor), *FIELDS)
                pipe.hgetall(keys.audiences)
                values, defs = await pipe.execute()
            fields = {f: (v.decode() if isinstance(v, bytes) else v)
                      for f, v in zip(FIELDS, values, strict=True)}
            names = {(a.decode() if isinstance(a, bytes) else a): orjson.loads(d).get("name")
                     or "" for a, d in defs.items()}
            return self.json({"customer_id": session.visitor,
                              "anonymous_id": session.anonymous_id,
                              "logged_in": session.customer_id is not None,
                              **personal(fields, names)},
                             headers={"Cache-Control": "no-store"})

    def guarded(request: Request) -> Session | Response:
        """The session of a request to a shop route that writes (events, log-in, log-out),
        or its refusal: 429 over the client's rate, 401 without a shop session, 415 unless
        JSON (no cross-site form posts)."""
        limited = ingest.limited(request)
        if limited is not None:
            return limited
        session = sessions.session(_cookie(request))
        if session is None:
            return error(401, "no shop session")
        if aio(request).content_type != "application/json":
            return error(415, "send application/json")
        return session

    async def json_object(request: Request) -> dict[str, Any] | Response:
        """The request's body, a JSON object, or a 400 saying why not."""
        try:
            body = orjson.loads(await aio(request).read())
        except orjson.JSONDecodeError as exc:
            return error(400, f"body is not JSON: {exc}")
        return body if isinstance(body, dict) else error(400, "send a JSON object")

    async def claim(anon: str, cid: str) -> bool:
        """Claim the pair (anonymous id, customer id) for a log-in, atomically per id
        (``SET NX`` on each): of two log-ins racing, one of the same anonymous id as two
        customers or of two anonymous ids as one customer, only one gets both claims. A retry
        of the same pair holds them already. A lost race gives back what it took."""
        mine = await rt.redis.set(keys.shop_claim(anon), cid, nx=True, ex=CLAIM_TTL_S)
        if not mine and await rt.redis.get(keys.shop_claim(anon)) != cid.encode():
            return False
        if await rt.redis.set(keys.shop_claim(cid), anon, nx=True, ex=CLAIM_TTL_S) or (
                await rt.redis.get(keys.shop_claim(cid)) == anon.encode()):
            return True
        if mine:
            await rt.redis.delete(keys.shop_claim(anon))
        return False

    @app.page("/demo/shop/events")
    class ShopEvents(View):
        async def post(self, request: Request) -> Response:
            session = guarded(request)
            if not isinstance(session, Session):
                return session
            return await ingest.post(request, session.refuses)

    @app.page("/demo/shop/login")
    class ShopLogin(View):
        async def post(self, request: Request) -> Response:
            own = guarded(request)
            if not isinstance(own, Session):
                return own
            body = await json_object(request)
            if not isinstance(body, dict):
                return body
            cid = body.get("customer_id")
            if not isinstance(cid, str) or not 0 < len(cid) <= 128 or cid.startswith(
                    ANONYMOUS):
                return error(400, f"customer_id: 1 to 128 characters, not {ANONYMOUS}...")
            if own.customer_id is not None or own.anonymous_id is None:
                return (json_response(200, {"customer_id": cid}) if cid == own.customer_id
                        else error(403, f"already logged in as {own.visitor}"))
            if not await opens(cid):
                return error(403, "the demo has no passwords: it logs in only as an id "
                                  "Segmenter has not seen yet")
            if not await claim(own.anonymous_id, cid):
                return error(403, "another log-in holds this visitor or this id")
            session = Session(own.anonymous_id, cid)
            identify = {"event_id": "login-" + secrets.token_hex(12), "type": "identify",
                        "customer_id": cid, "anonymous_id": own.anonymous_id,
                        "timestamp": int(time.time() * 1000)}
            sent = await ingest.accept(request, [identify], session.refuses)
            if sent.status != 202:  # nothing linked: the pair is free again
                for held in (cid, own.anonymous_id):  # one key a call: slots differ
                    await rt.redis.delete(keys.shop_claim(held))
                return sent
            return json_response(200, {"customer_id": cid, "anonymous_id": own.anonymous_id},
                                 sessions.cookie(session))

    @app.page("/demo/shop/logout")
    class ShopLogout(View):
        async def post(self, request: Request) -> Response:
            own = guarded(request)
            if not isinstance(own, Session):
                return own
            if not isinstance(body := await json_object(request), dict):  # {} will do
                return body
            # a new anonymous visitor: the old ids stay linked in Segmenter, not to this one
            session = Session(ANONYMOUS + secrets.token_hex(8), None)
            return json_response(200, {"anonymous_id": session.anonymous_id},
                                 sessions.cookie(session))
