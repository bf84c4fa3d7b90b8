"""HTTP routes of audiences (contract §4): ``GET /audiences``, ``GET|PUT|DELETE
/audiences/<id>``. Reads are open (definitions and sizes, no personal data); changes need
the admin bearer token ``SEGMENTER_API_TOKEN`` (403 while none is configured)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import orjson
from faust.web import Request, Response, View

from models.audiences import InvalidAudience

if TYPE_CHECKING:
    import faust

    from stream.runtime import Runtime


def register(app: faust.App, rt: Runtime, token_matches: Callable[[str, str], bool]) -> None:
    """Add the audience routes to the Faust app; ``token_matches`` checks an
    ``Authorization`` header against comma-separated tokens (``stream.web``'s)."""
    settings = rt.settings

    def refused(view: View, request: Request) -> Response | None:
        if not any(t.strip() for t in settings.api_token.split(",")):
            return view.json({"error": "audience changes are disabled: set "
                                       "SEGMENTER_API_TOKEN"}, status=403)
        if not token_matches(request.headers.get("Authorization", ""), settings.api_token):
            return view.json({"error": "missing or wrong bearer token (SEGMENTER_API_TOKEN)"},
                             status=401, headers={"WWW-Authenticate": "Bearer"})
        # the body's size is bounded by the app (SEGMENTER_MAX_BODY_BYTES, 413)
        return None

    @app.page("/audiences")
    class Audiences(View):
        async def get(self, request: Request) -> Response:
            """Every audience with its definition and live size."""
            return self.json({"audiences": list((await rt.audiences.describe()).values())})

    @app.page("/audiences/{audience_id}")
    class OneAudience(View):
        async def get(self, request: Request, audience_id: str) -> Response:
            found = await rt.audiences.describe(audience_id)
            if audience_id not in found:
                return self.json({"error": "unknown audience", "audience": audience_id},
                                 status=404)
            return self.json(found[audience_id])

        async def put(self, request: Request, audience_id: str) -> Response:
            denied = refused(self, request)
            if denied is not None:
                return denied
            try:
                body = orjson.loads(await request.read())
            except orjson.JSONDecodeError as exc:
                return self.json({"error": f"body is not JSON: {exc}"}, status=400)
            try:
                _, created = await rt.audiences.put(audience_id, body)
            except InvalidAudience as exc:
                return self.json({"error": f"invalid audience: {exc}", "audience": audience_id},
                                 status=400)
            found = await rt.audiences.describe(audience_id)
            return self.json(found[audience_id], status=201 if created else 200)

        async def delete(self, request: Request, audience_id: str) -> Response:
            denied = refused(self, request)
            if denied is not None:
                return denied
            if not await rt.audiences.delete(audience_id):
                return self.json({"error": "unknown audience", "audience": audience_id},
                                 status=404)
            return self.json({"audience": audience_id, "deleted": True})
