"""``POST /events`` (contract §4): one event or a list, from a collector or a site's server,
validated as the worker validates them and produced keyed by customer id.

In order, each step cheaper than the next, so a flood costs little: the client's rate limit
(one token for the attempt), the write key (``SEGMENTER_WRITE_KEY``, a bearer token, when
set), the body (at most ``SEGMENTER_MAX_BODY_BYTES``; JSON; 1 to 500 events, each at most
64 KiB and valid), the rate limit again for the events it carries. A refused request
produces nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from faust.web import Request, Response

from models.events import MAX_EVENT_BYTES, InvalidEvent, latest_allowed_ms, parse_event
from stream import guard
from stream.http_limits import MAX_EVENTS_PER_REQUEST

if TYPE_CHECKING:
    from stream.runtime import Runtime

Check = Callable[[Any], str | None]
"""Extra rule for each parsed event: None, or why it is refused (403)."""


class Ingest:
    """The ingest path of one worker, shared by ``POST /events`` and the demo shop."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        s = rt.settings
        self.limiter = guard.RateLimiter(s.events_rate, s.events_burst)

    def limited(self, request: Request, n: int = 1) -> Response | None:
        """429 when the client is over its rate for ``n`` more events, else None."""
        wait = self.limiter.take(guard.client_of(request, self.rt.settings.forwarded_hops), n)
        return guard.too_many(wait) if wait else None

    def refused_key(self, request: Request) -> Response | None:
        """401 unless the request carries a write key (when any is configured)."""
        keys = self.rt.settings.write_key
        if guard.any_token(keys) and not guard.token_matches(
                request.headers.get("Authorization", ""), keys):
            return guard.unauthorized("SEGMENTER_WRITE_KEY")
        return None

    async def post(self, request: Request, check: Check | None = None) -> Response:
        """Validate and produce the events of a request; 202 ``{"accepted": n}``."""
        raw = await guard.aio(request).read()  # bounded by the app's client_max_size (413)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return guard.error(400, f"body is not JSON: {exc}")
        return await self.accept(request, body if isinstance(body, list) else [body], check)

    async def accept(self, request: Request, items: list[Any],
                     check: Check | None = None) -> Response:
        """Validate and produce events already decoded (a request's body, or the demo shop's
        own ``identify``); 202 ``{"accepted": n}``, else the refusal, nothing produced."""
        settings = self.rt.settings
        if not 0 < len(items) <= MAX_EVENTS_PER_REQUEST:
            return guard.error(400, f"send 1 to {MAX_EVENTS_PER_REQUEST} events")
        encoded = []
        latest = latest_allowed_ms(int(time.time() * 1000), settings.max_future_s)
        for n, item in enumerate(items):
            value = orjson.dumps(item)
            if len(value) > MAX_EVENT_BYTES:
                return guard.error(413, f"event {n}: {len(value)} bytes, over the "
                                        f"{MAX_EVENT_BYTES // 1024} KiB of one event "
                                        "(contract §1)")
            try:
                ev = parse_event(value, None, max_ts_ms=latest)
            except InvalidEvent as exc:
                return guard.error(400, f"event {n}: {exc}")
            why = check(ev) if check is not None else None
            if why is not None:
                return guard.error(403, f"event {n}: {why}")
            encoded.append((ev.customer_id.encode(), value))
        over = self.limited(request, len(encoded) - 1)  # the attempt took one already
        if over is not None:
            return over
        futures = [await self.rt.producer.send(settings.events_topic, key=k, value=v)
                   for k, v in encoded]
        await asyncio.gather(*futures)
        return guard.json_response(202, {"accepted": len(encoded)})

    async def handle(self, request: Request) -> Response:
        """``POST /events``."""
        return (self.limited(request) or self.refused_key(request)
                or await self.post(request))
