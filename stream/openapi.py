"""The OpenAPI 3.1 description of a worker's HTTP API (contract §4), served at
``GET /openapi.json`` and checked in as ``docs/openapi.json`` (a unit test keeps them equal;
``python -m stream.openapi > docs/openapi.json`` writes it). It states the limits and the
tokens each route needs; it does not depend on settings (defaults are named in the text)."""

from __future__ import annotations

import sys
from typing import Any

import orjson

from stream.http_limits import MAX_EVENTS_PER_REQUEST, SEGMENT_FIELDS

JSON = "application/json"
Doc = dict[str, Any]

ID = {"type": "string", "minLength": 1, "maxLength": 128}
ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
_FIELDS = {
    "customer_id": {"type": "string"}, "segment": {"type": "string"},
    "segment_name": {"type": "string"}, "model_version": {"type": "integer"},
    "updated_at": {"type": "integer"}, "confidence": {"type": "number"},
    "explanation": {"type": "string"},
    "audiences": {"type": "array", "items": {"type": "string"}}}
SEGMENT = {"type": "object", "required": ["segment"],
           "properties": {**_FIELDS, "rfm": {"type": "string"}}}
CUSTOMER = {"type": "object", "required": ["customer_id", "traits", "rfm", "audiences"],
            "properties": {**_FIELDS, "traits": {"type": "object"},
                           "rfm": {"type": ["object", "null"]}}}
_OPT_STR = {"type": ["string", "null"]}
_OPT_NUM = {"type": ["number", "null"], "minimum": 0}
_OPT_ID = {"type": ["string", "null"], "minLength": 1, "maxLength": 128}
EVENT = {
    "type": "object", "required": ["event_id", "type", "timestamp"],
    "anyOf": [{"required": ["customer_id"]}, {"required": ["anonymous_id"]}],
    "description": "contract §1: customer_id, or anonymous_id without one; at most 64 KiB "
                   "as JSON",
    "properties": {
        "event_id": ID, "customer_id": _OPT_ID, "anonymous_id": _OPT_ID,
        "type": {"type": "string", "minLength": 1, "maxLength": 64},
        "timestamp": {
            "description": "ISO-8601 with a UTC offset, or epoch milliseconds; from the Unix "
                           "epoch to SEGMENTER_MAX_FUTURE_S (default a day) ahead of the "
                           "worker's clock",
            "oneOf": [{"type": "string", "minLength": 1, "maxLength": 64},
                      {"type": "integer", "minimum": 0}]},
        "properties": {"type": ["object", "null"], "properties": {
            "amount": _OPT_NUM, "country": {"type": ["string", "null"],
                                            "pattern": "^[A-Za-z]{2}$"},
            **{k: _OPT_STR for k in ("currency", "category", "product_id", "device",
                                     "channel", "region")}}},
        "traits": {"type": ["object", "null"], "properties": {
            "age": {"type": ["number", "null"], "minimum": 0, "maximum": 130},
            "income": _OPT_NUM, "gender": _OPT_STR,
            "household_size": {"type": ["number", "null"], "minimum": 1, "maximum": 50},
            "interests": {"type": "array", "items": {"type": "string"}}}}},
    "if": {"properties": {"type": {"const": "purchase"}}},
    "then": {"properties": {"properties": {"type": "object", "required": ["amount"],
                                           "properties": {"amount": {"type": "number"}}}},
             "required": ["properties"]},
}
TRACKING = {
    "type": "object", "required": ["messageId", "type"],
    "description": "a Segment / RudderStack message (contract §1.3), mapped to an event",
    "properties": {"messageId": {"type": "string"},
                   "type": {"enum": ["track", "page", "screen", "identify", "alias"]}}}
AUDIENCE = {"type": "object", "required": ["name", "where"], "additionalProperties": False,
            "description": "contract §2.3; the condition is checked beyond its shape (known "
                           "traits, event types, operators), 400 naming the problem",
            "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 200},
                           "where": {"type": "object"}}}
AUDIENCE_ID = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"}


def _ref(name: str) -> Doc:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Doc, description: str) -> Doc:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _errors(*codes: int) -> Doc:
    what = {400: "invalid input, named", 401: "missing or wrong bearer token",
            403: "refused (the route is disabled, or not this id)", 404: "unknown",
            413: "body over SEGMENTER_MAX_BODY_BYTES (default 1 MiB), or an event over 64 KiB",
            415: "not application/json", 429: "rate limit exceeded (SEGMENTER_EVENTS_RATE)",
            503: "not ready, with reasons"}
    out = {str(c): _json(_ref("Error"), what[c]) for c in codes}
    if 429 in codes:
        out["429"]["headers"] = {"Retry-After": {
            "description": "seconds", "schema": {"type": "integer", "minimum": 1}}}
    return out


def _path(name: str, schema: Doc | None = None) -> Doc:
    return {"name": name, "in": "path", "required": True, "schema": schema or ID}


def _op(summary: str, ok: Doc, *errors: int, security: list[Doc] | None = None,
        params: list[Doc] | None = None, body: Doc | None = None) -> Doc:
    op: Doc = {"summary": summary, "responses": {**ok, **_errors(*errors)}}
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {"required": True, "content": {JSON: {"schema": body}}}
    op["security"] = security if security is not None else []
    return op


def _long_line(op: Doc) -> Doc:
    """The HTTP server's own 400 (plain text) for a request line over 8190 bytes."""
    op["responses"]["400"]["content"]["text/plain"] = {"schema": TEXT}
    return op


READ: list[Doc] = [{"readToken": []}, {"apiToken": []}]
ADMIN: list[Doc] = [{"apiToken": []}]
SHOP: list[Doc] = [{"shopSession": []}]
CID = [_path("customer_id")]
TEXT = {"type": "string"}


def paths() -> Doc:
    """Every route, by path and method."""
    public = ", ".join(SEGMENT_FIELDS[:5])
    return {
        "/customers/{customer_id}/segment": {"get": _op(
            f"A customer's segment. Without a read token only SEGMENTER_PUBLIC_FIELDS (default "
            f"{public}); with one every segment field. Ids are URL-encoded (any Unicode, "
            "slashes, quotes).", {"200": _json(_ref("Segment"), "the segment fields")},
            400, 401, 404, security=[{}, *READ], params=CID)},
        "/customers/{customer_id}": {
            "get": _op("Segment fields, live traits, RFM scores and audiences (personal data).",
                       {"200": _json(_ref("Customer"), "the customer")}, 400, 401, 404,
                       security=READ, params=CID),
            "delete": _op("Right to erasure: forgets the customer everywhere.",
                          {"200": _json({"type": "object", "required": ["erased"]}, "erased")},
                          400, 401, 403, security=ADMIN, params=CID)},
        "/customers/segments": {
            "get": _long_line(_op(
                "Batch lookup of up to 100 ids (?id=a&id=b); unknown ids map to null. The "
                "request line is at most 8190 bytes (the HTTP server's limit; beyond it a "
                "text/plain 400): POST for long ids.",
                {"200": _json(_ref("Batch"), "segments by id")}, 400, 401,
                security=READ, params=[{
                    "name": "id", "in": "query", "required": True, "explode": True,
                    "schema": {"type": "array", "items": ID, "minItems": 1,
                               "maxItems": 100}}])),
            "post": _op("Batch lookup of up to 100 ids.",
                        {"200": _json(_ref("Batch"), "segments by id")}, 400, 401, 413,
                        security=READ, body={
                            "type": "object", "required": ["ids"], "properties": {"ids": {
                                "type": "array", "items": ID, "minItems": 1,
                                "maxItems": 100}}})},
        "/events": {"post": _op(
            f"One event or a list of 1 to {MAX_EVENTS_PER_REQUEST}, validated as the worker "
            "validates them, produced keyed by id. Needs a write key when SEGMENTER_WRITE_KEY "
            "is set; rate-limited per client.",
            {"202": _json({"type": "object", "required": ["accepted"], "properties": {
                "accepted": {"type": "integer", "minimum": 1}}}, "produced")},
            400, 401, 413, 429, security=[{"writeKey": []}],
            body={"anyOf": [_ref("Event"), _ref("Tracking"), {
                "type": "array", "items": {"anyOf": [_ref("Event"), _ref("Tracking")]},
                "minItems": 1, "maxItems": MAX_EVENTS_PER_REQUEST}]})},
        "/segments": {"get": _op(
            "Segment profiles with live sizes.",
            {"200": _json({"type": "object", "additionalProperties": {"type": "object"}},
                          "profiles by segment id")}, 400,
            params=[{"name": "status", "in": "query", "required": False, "schema": {
                "type": "string", "enum": ["active", "retired", "all"]}}])},
        "/segments/{segment_id}": {"get": _op(
            "One segment profile.", {"200": _json({"type": "object"}, "the profile")}, 404,
            params=[_path("segment_id", {"type": "string", "minLength": 1})])},
        "/audiences": {"get": _op(
            "Every audience with its definition and live size.",
            {"200": _json({"type": "object", "required": ["audiences"], "properties": {
                "audiences": {"type": "array"}}}, "audiences")})},
        "/audiences/{audience_id}": {
            "get": _op("One audience.", {"200": _json({"type": "object"}, "the audience")},
                       404, params=[_path("audience_id", {"type": "string", "minLength": 1})]),
            "put": _op("Create or replace an audience (contract §2.3).",
                       {"200": _json({"type": "object"}, "replaced"),
                        "201": _json({"type": "object"}, "created")}, 400, 401, 403, 413,
                       security=ADMIN, body=_ref("Audience"),
                       params=[_path("audience_id", AUDIENCE_ID)]),
            "delete": _op("Delete an audience.", {"200": _json({"type": "object"}, "deleted")},
                          401, 403, 404, security=ADMIN,
                          params=[_path("audience_id", {"type": "string", "minLength": 1})])},
        "/health": {"get": _op(
            "200 when consuming and Kafka and Redis answer; 503 with reasons otherwise.",
            {"200": _json({"type": "object", "required": ["status", "reasons"]}, "healthy")},
            503)},
        "/metrics": {"get": _op("Prometheus text format (contract §5).", {"200": {
            "description": "metrics", "content": {"text/plain": {"schema": TEXT}}}})},
        "/api/dashboard": {"get": _op("The dashboard's data (aggregates, no customer data).",
                                      {"200": _json({"type": "object"}, "snapshot")}, 503)},
        "/": {"get": _op("The dashboard page.", {"200": {
            "description": "HTML", "content": {"text/html": {"schema": TEXT}}}})},
        "/openapi.json": {"get": _op("This description.",
                                     {"200": _json({"type": "object"}, "OpenAPI 3.1")})},
        "/demo/shop": {"get": _op(
            "The example shop page (a new visitor gets an anonymous id in an HttpOnly cookie).",
            {"200": {"description": "HTML", "content": {"text/html": {"schema": TEXT}}}},
            params=[{"name": "customer", "in": "query", "required": False,
                     "schema": {"type": "string"}}])},
        "/demo/shop/me": {"get": _op(
            "The shop's server-side read for its signed-in visitor.",
            {"200": _json({"type": "object"}, "what the page shows them")}, 401,
            security=SHOP)},
        "/demo/shop/events": {"post": _op(
            "The shop's server-side collector: events of its signed-in visitor only.",
            {"202": _json({"type": "object", "required": ["accepted"]}, "produced")},
            400, 401, 403, 413, 415, 429, security=SHOP,
            body={"type": "array", "items": _ref("Event"), "minItems": 1,
                  "maxItems": MAX_EVENTS_PER_REQUEST})},
        "/demo/shop/login": {"post": _op(
            "Logs the shop's anonymous visitor in as a customer id Segmenter has not seen "
            "(an identify with both ids, then the session is the customer's).",
            {"200": _json({"type": "object", "required": ["customer_id"]}, "logged in")},
            400, 401, 403, 413, 415, 429, security=SHOP,
            body={"type": "object", "required": ["customer_id"],
                  "properties": {"customer_id": ID}})},
        "/demo/shop/logout": {"post": _op(
            "Logs the shop's visitor out: a new anonymous id in a fresh session (a new "
            "visitor).",
            {"200": _json({"type": "object", "required": ["anonymous_id"]}, "logged out")},
            401, 413, 415, 429, security=SHOP, body={"type": "object"})},
    }


def document() -> Doc:
    """The whole OpenAPI document."""
    bearer = {"type": "http", "scheme": "bearer"}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Segmenter worker HTTP API", "version": "2",
                 "description": "Contract §4 (docs/contract.md). Errors are JSON "
                                "{\"error\": ...}; every body is at most "
                                "SEGMENTER_MAX_BODY_BYTES (default 1 MiB). Token settings "
                                "may hold several comma-separated values (rotation)."},
        "paths": paths(),
        "components": {
            "schemas": {"Error": ERROR, "Segment": SEGMENT, "Customer": CUSTOMER,
                        "Event": EVENT, "Tracking": TRACKING, "Audience": AUDIENCE,
                        "Batch": {"type": "object", "required": ["customers"], "properties": {
                            "customers": {"type": "object", "additionalProperties": {
                                "anyOf": [_ref("Segment"), {"type": "null"}]}}}}},
            "securitySchemes": {
                "readToken": {**bearer, "description": "SEGMENTER_READ_TOKEN"},
                "apiToken": {**bearer, "description": "SEGMENTER_API_TOKEN (admin)"},
                "writeKey": {**bearer, "description": "SEGMENTER_WRITE_KEY (when set)"},
                "shopSession": {"type": "apiKey", "in": "cookie", "name": "segmenter_shop",
                                "description": "the demo shop's signed session cookie"}}},
    }


if __name__ == "__main__":
    sys.stdout.write(orjson.dumps(document(), option=orjson.OPT_INDENT_2).decode() + "\n")
