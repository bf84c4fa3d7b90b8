"""HTTP routes of a worker (SPEC §4): lookups, profiles, erasure, ingest, health, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import time
from importlib import resources
from typing import TYPE_CHECKING, Any

import orjson
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from models.features import DAY_MS
from models.rfm import key_of
from models.traits import TRAIT_NAMES, for_api, from_fields
from stream import audience_web, openapi, shop
from stream.errors import reason
from stream.guard import any_token, error, token_matches, unauthorized
from stream.http_limits import public_field_names
from stream.ingest import Ingest
from stream.rfm_io import read_customer, read_grid
from stream.stitch_io import produce

if TYPE_CHECKING:
    import faust

    from stream.runtime import Runtime

MAX_BATCH_IDS = 100
MAX_ID_CHARS = 128
PRIVATE_FIELDS = frozenset(TRAIT_NAMES)
"""Customer hash fields only ``GET /customers/<id>`` gives (personal data, internals)."""


def segment_fields(doc: dict[str, str] | None) -> dict[str, Any] | None:
    """What the segment lookups give of a customer hash: None before the customer has a
    segment (the hash may already hold their traits), private fields left out.

    >>> segment_fields({"orders": "1"}) is None
    True
    >>> segment_fields({"segment": "s1", "orders": "1", "rfm": "Champions"})
    {'segment': 's1', 'rfm': 'Champions'}
    """
    if not doc or "segment" not in doc:
        return None
    return typed({k: v for k, v in doc.items() if k not in PRIVATE_FIELDS})


def typed(doc: dict[str, str]) -> dict[str, Any]:
    """Hash fields with their JSON types (Redis stores strings), and the explanation the
    hash leaves out when it would repeat the segment's name.

    >>> typed({"segment": "s1", "confidence": "0.5", "model_version": "3",
    ...        "audiences": '["a1"]'})
    {'segment': 's1', 'confidence': 0.5, 'model_version': 3, 'audiences': ['a1']}
    >>> typed({"segment": "s1", "segment_name": "Big spenders"})["explanation"]
    'big spenders'
    """
    out: dict[str, Any] = dict(doc)
    if "segment_name" in out and "explanation" not in out:  # the hash omits a repeated name
        out["explanation"] = out["segment_name"].lower()
    for name, kind in (("model_version", int), ("updated_at", int), ("confidence", float),
                       ("audiences", orjson.loads)):
        if name in out:
            with contextlib.suppress(ValueError):
                out[name] = kind(out[name])
    return out


def register(app: faust.App, rt: Runtime) -> None:
    """Add every route to the Faust app."""
    settings = rt.settings

    public = public_field_names(settings.public_fields)
    reader_tokens = f"{settings.read_token},{settings.api_token}"
    readers = "SEGMENTER_READ_TOKEN or SEGMENTER_API_TOKEN"

    def reader(request: Request) -> bool:
        """The request carries a read token (or the admin token)."""
        return token_matches(request.headers.get("Authorization", ""), reader_tokens)

    def bad_id(customer_id: str) -> Response | None:
        if len(customer_id) > MAX_ID_CHARS:
            return error(400, f"customer id must have 1 to {MAX_ID_CHARS} characters")
        return None

    # An id is one path segment, its slashes encoded (%2F): aiohttp matches the path with
    # %2F still encoded, then decodes the id; [^/] matches line breaks too ("." would not).
    # So DELETE /customers/x/segment is a wrong method, never an erasure of "x/segment".
    @app.page("/customers/{customer_id:[^/]+}/segment")
    class CustomerSegment(View):
        async def get(self, request: Request, customer_id: str) -> Response:
            """Every segment field with a read token; the public fields without one (a
            browser's call), or 401 when none are public."""
            full = reader(request)
            if not full and not public:
                return unauthorized(readers)
            if (bad := bad_id(customer_id)) is not None:
                return bad
            doc = segment_fields(await rt.store.customer(customer_id))
            if doc is None:
                body = {"error": "unknown customer", "customer_id": customer_id}
                waiting = rt.status().waiting
                if waiting:  # known or not, nobody has a segment before the first model
                    body["model"] = waiting
                return self.json(body, status=404)
            if not full:
                return self.json({"customer_id": customer_id,
                                  **{k: doc[k] for k in public if k in doc}})
            return self.json({"customer_id": customer_id, **doc},
                             headers={"Cache-Control": "no-store"})

    @app.page("/customers/segments")
    class CustomerSegments(View):
        """Batch lookup: ``POST {"ids": [...]}`` or ``GET ?id=a&id=b``; unknown ids map to
        null."""

        async def _answer(self, ids: list[Any]) -> Response:
            if not ids or len(ids) > MAX_BATCH_IDS or not all(
                    isinstance(i, str) and 0 < len(i) <= 128 for i in ids):
                return self.json({"error": f"give 1 to {MAX_BATCH_IDS} customer ids, each a "
                                           "string of 1 to 128 characters"}, status=400)
            docs = await rt.store.customers(ids)
            return self.json({"customers": {
                cid: segment_fields(d) for cid, d in zip(ids, docs, strict=True)}},
                headers={"Cache-Control": "no-store"})

        async def get(self, request: Request) -> Response:
            if not reader(request):
                return unauthorized(readers)
            query: Any = request.query  # a MultiDict: repeated ?id= parameters
            return await self._answer(list(query.getall("id", [])))

        async def post(self, request: Request) -> Response:
            if not reader(request):
                return unauthorized(readers)
            try:
                body = await request.json()
            except ValueError:
                return self.json({"error": "body must be JSON"}, status=400)
            ids = body.get("ids") if isinstance(body, dict) else None
            return await self._answer(ids if isinstance(ids, list) else [])

    @app.page("/customers/{customer_id:[^/]+}")
    class Customer(View):
        async def get(self, request: Request, customer_id: str) -> Response:
            """Segment fields, live traits, RFM scores and audiences (contract §4)."""
            if not reader(request):
                return unauthorized(readers)
            if (bad := bad_id(customer_id)) is not None:
                return bad
            found = await read_customer(rt.redis, rt.store.keys, customer_id)
            if found is None:
                return self.json({"error": "unknown customer", "customer_id": customer_id},
                                 status=404)
            doc, state = found
            stored = from_fields(doc)
            body = {"customer_id": customer_id,
                    **typed({k: v for k, v in doc.items() if k not in PRIVATE_FIELDS})}
            body["traits"] = for_api(stored, state, settings.half_life_days * DAY_MS,
                                     rt.pipeline.core.watermark)
            body["rfm"] = rt.pipeline.rfm.quintiles.of(key_of(stored))
            body["audiences"] = orjson.loads(doc.get("audiences") or "[]")
            return self.json(body, headers={"Cache-Control": "no-store"})

        async def delete(self, request: Request, customer_id: str) -> Response:
            if not any_token(settings.api_token):
                return self.json({"error": "erasure is disabled: set SEGMENTER_API_TOKEN"},
                                 status=403)
            if not token_matches(request.headers.get("Authorization", ""), settings.api_token):
                return unauthorized("SEGMENTER_API_TOKEN")
            if (bad := bad_id(customer_id)) is not None:
                return bad
            # Asked before the control message: the owning worker may erase first.
            found = await rt.store.stored(customer_id)
            # In order with the customer's events: the worker owning the partition forgets
            # its copy too; the Redis deletion below makes the erasure visible at once.
            # Its linked anonymous ids too (identity stitching): their workers forget them.
            linked = await rt.pipeline.writer.stitching.linked([customer_id]) \
                if rt.pipeline.writer is not None else []
            await produce(rt.producer, settings.events_topic, [
                (cid.encode(), None, b"erase") for cid in [customer_id, *linked]])
            found |= bool(await rt.store.erase([customer_id], int(time.time() * 1000),
                                               rt.status().model_version))
            return self.json({"customer_id": customer_id, "erased": True, "found": found})

    ingest = Ingest(rt)

    @app.page("/events")
    class Events(View):
        """Ingest one event or a JSON list of events (``stream.ingest``)."""

        async def post(self, request: Request) -> Response:
            return await ingest.handle(request)

    document = orjson.dumps(openapi.document())

    @app.page("/openapi.json")
    class OpenAPI(View):
        async def get(self, request: Request) -> Response:
            """The OpenAPI description of every route (docs/openapi.json)."""
            return self.bytes(document, content_type="application/json")

    @app.page("/segments")
    class Segments(View):
        """Segment profiles; ``?status=active`` (the default), ``retired`` or ``all``."""

        async def get(self, request: Request) -> Response:
            status = request.query.get("status", "active")
            if status not in ("active", "retired", "all"):
                return self.json({"error": "status must be active, retired or all"},
                                 status=400)
            profiles = await rt.store.profiles()
            return self.json({sid: p for sid, p in profiles.items()
                              if status == "all" or p.get("status", "active") == status})

    @app.page("/segments/{segment_id}")
    class OneSegment(View):
        async def get(self, request: Request, segment_id: str) -> Response:
            profiles = await rt.store.profiles()
            if segment_id not in profiles:
                return self.json({"error": "unknown segment", "segment_id": segment_id},
                                 status=404)
            return self.json(profiles[segment_id])

    audience_web.register(app, rt, token_matches)

    @app.page("/health")
    class Health(View):
        async def get(self, request: Request) -> Response:
            status = rt.status()
            reasons = list(status.problems)
            try:
                await asyncio.wait_for(rt.redis.ping(), 2)
            except Exception as exc:
                reasons.append(f"Redis unreachable: {reason(exc)}")
            body = {"status": "ok" if not reasons else "unavailable", "reasons": reasons,
                    "processed": status.processed, "model_version": status.model_version,
                    "relay_leader": status.relay_leader, "degraded": rt.health.degraded()}
            if status.waiting:
                body["model"] = status.waiting
            return self.json(body, status=200 if not reasons else 503)

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(generate_latest(rt.metrics.registry),
                              content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/api/dashboard")
    class DashboardData(View):
        async def get(self, request: Request) -> Response:
            if not rt.started:
                return self.json({"error": "starting"}, status=503)
            return self.json(await rt.dashboard.snapshot(
                rt.status(), rt.redis, rt.store.keys, await rt.store.profiles(),
                await rt.audiences.describe(), await read_grid(rt.redis, rt.store.keys)))

    @app.page("/")
    class DashboardPage(View):
        async def get(self, request: Request) -> Response:
            return self.html(resources.files("stream").joinpath("static/dashboard.html")
                             .read_text())

    shop.register(app, rt, ingest)
