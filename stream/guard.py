"""What stands between the HTTP API and anyone who can reach it (issue #22): bearer tokens
compared in constant time, a rate limit per client, a size limit on every body, and errors
that are always JSON naming the problem (also aiohttp's own 404/405/413 and CORS refusals).

Tokens are never logged: they live in settings fields kept out of ``repr`` and are only ever
compared here.
"""

from __future__ import annotations

import hmac
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import orjson
from aiohttp import web
from faust.web import Request, Response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_CLIENTS = 10_000
"""Rate-limit buckets kept; beyond it the fullest (idle) ones are forgotten first."""


def token_matches(given: str, tokens: str) -> bool:
    """``given`` (an ``Authorization`` header) is ``Bearer <t>`` for one of the
    comma-separated ``tokens``; compared in constant time, against every token (no early
    exit telling which one came close).

    >>> token_matches("Bearer b", "a, b"), token_matches("Bearer ", ""), token_matches("", "a")
    (True, False, False)
    >>> token_matches("Bearer a", ","), token_matches("bearer a", "a")
    (False, False)
    """
    ok = False
    for token in (t.strip() for t in tokens.split(",")):
        if token and hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            ok = True
    return ok


def any_token(tokens: str) -> bool:
    """A token setting holds at least one token.

    >>> any_token(" , "), any_token("a,")
    (False, True)
    """
    return any(t.strip() for t in tokens.split(","))


def first_token(tokens: str) -> str:
    """The first of comma-separated tokens ("" when none).

    >>> first_token(" new , old")
    'new'
    """
    return next((t.strip() for t in tokens.split(",") if t.strip()), "")


def unauthorized(names: str) -> Response:
    """401 naming the settings whose tokens the route takes (never the tokens)."""
    return error(401, f"missing or wrong bearer token ({names})",
                 headers={"WWW-Authenticate": "Bearer"})


def error(status: int, message: str, headers: dict[str, str] | None = None,
          **extra: Any) -> Response:
    """A JSON error response: ``{"error": message, ...extra}`` (faust's aiohttp driver
    answers with aiohttp responses)."""
    return json_response(status, {"error": message, **extra}, headers)


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    """A JSON response for a faust view or the middleware."""
    return cast(Response, web.Response(status=status, body=orjson.dumps(body),
                                       content_type="application/json", headers=headers))


def aio(request: Request) -> web.Request:
    """faust's request, as the aiohttp request it is (peer address, content type)."""
    return cast(web.Request, request)


def client_of(request: Request, hops: int) -> str:
    """Who sent a request, for rate limits: the peer address, or with ``hops`` trusted
    proxies in front, the ``X-Forwarded-For`` entry they appended for it (entries further
    left are the client's own word and ignored)."""
    req = aio(request)
    if hops > 0:
        entries = [e.strip() for h in req.headers.getall("X-Forwarded-For", [])
                   for e in h.split(",")]
        if len(entries) >= hops and entries[-hops]:
            return entries[-hops]
    return req.remote or "unknown"


class RateLimiter:
    """A token bucket per client: ``rate`` events per second, up to ``burst`` at once.

    >>> clock = [0.0]
    >>> rl = RateLimiter(10, 500, now=lambda: clock[0])
    >>> rl.take("a", 500), rl.take("a", 1), rl.take("b", 1)
    (0.0, 0.1, 0.0)
    >>> clock[0] = 50.0; rl.take("a", 500)
    0.0
    >>> RateLimiter(0, 0).take("a", 10**6)
    0.0
    """

    def __init__(self, rate: float, burst: int,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.now = rate, float(burst), now
        self.buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, at)

    def take(self, client: str, n: int) -> float:
        """Take ``n`` events from the client's bucket: 0.0 when allowed, else the seconds
        until they would be (nothing taken)."""
        if self.rate <= 0:
            return 0.0
        t = self.now()
        tokens, at = self.buckets.get(client, (self.burst, t))
        tokens = min(self.burst, tokens + (t - at) * self.rate)
        if tokens < n:
            self.buckets[client] = (tokens, t)
            return (n - tokens) / self.rate
        self.buckets[client] = (tokens - n, t)
        if len(self.buckets) > MAX_CLIENTS:
            self._forget(t)
        return 0.0

    def _forget(self, t: float) -> None:
        # A bucket refilled by now is the same as none; drop the fullest first.
        def level(item: tuple[str, tuple[float, float]]) -> float:
            return item[1][0] + (t - item[1][1]) * self.rate
        keep = sorted(self.buckets.items(), key=level)[: MAX_CLIENTS // 2]
        self.buckets = dict(keep)


def too_many(wait_s: float) -> Response:
    """429 with ``Retry-After`` (whole seconds, at least 1)."""
    seconds = max(1, math.ceil(wait_s))
    return error(429, f"rate limit exceeded (SEGMENTER_EVENTS_RATE): retry in {seconds} s",
                 headers={"Retry-After": str(seconds)}, retry_after_s=seconds)


def middleware(max_body_bytes: int) -> Any:
    """An aiohttp middleware: refuses a declared body over the limit before reading it,
    turns aiohttp's own refusals (unknown route, wrong method, body too large, CORS
    preflight from an unlisted origin) into JSON errors naming the problem, and marks
    every response ``nosniff``."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        length = request.content_length
        if length is not None and length > max_body_bytes:
            return _aio_error(413, f"body of {length} bytes is over the limit of {max_body_bytes} "
                              "(SEGMENTER_MAX_BODY_BYTES)")
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = _aio_error(exc.status, _reason(exc, max_body_bytes),
                             headers={k: v for k, v in exc.headers.items()
                                      if k in ("Allow", "WWW-Authenticate", "Retry-After")})
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    return guard


def _aio_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return cast(web.Response, error(status, message, headers))


def _reason(exc: web.HTTPException, max_body_bytes: int) -> str:
    if exc.status == 404:
        return "no such route"
    if exc.status == 405:
        return f"method not allowed here; allowed: {exc.headers.get('Allow', 'none')}"
    if exc.status == 413:
        return f"body over the limit of {max_body_bytes} bytes (SEGMENTER_MAX_BODY_BYTES)"
    return exc.text or exc.reason
