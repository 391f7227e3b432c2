"""GET /api/openapi.json: the JSON API described as OpenAPI 3.1."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from db.queries import SORT_COLUMNS
from db.tokens import MAX_NAME as MAX_TOKEN_NAME
from web.order_input import (
    DECIMAL_TEXT,
    MAX_INSTRUMENT,
    MAX_NOTE,
    MAX_NUMBER_CHARS,
    SIDES,
    STATUSES,
)

_DECIMAL = {"type": "string", "pattern": r"^-?\d+(\.\d+)?$", "examples": ["101.25"]}
_SORT_KEY = "[-+]?(" + "|".join(SORT_COLUMNS) + ")"
_SORT_PATTERN = f"^{_SORT_KEY}(,{_SORT_KEY}){{0,{len(SORT_COLUMNS) - 1}}}$"
_ERROR = {"$ref": "#/components/schemas/Error"}


_RETRY_AFTER = {"Retry-After": {
    "description": "seconds to wait before retrying (a locked row, a busy or unreachable"
                   " database)",
    "schema": {"type": "integer", "minimum": 0}}}
# Every operation may meet a busy or unreachable database: 503 with Retry-After ("busy",
# "timeout", "unavailable").
_BUSY = 503


def _errors(*statuses: int) -> dict[str, Any]:
    """Error responses; 409 (also "locked" for writes) and 503 may carry Retry-After."""
    responses: dict[str, Any] = {}
    for s in (*statuses, _BUSY):
        response: dict[str, Any] = {"description": "error",
                                    "content": {"application/json": {"schema": _ERROR}}}
        if s in (409, 503):
            response["headers"] = _RETRY_AFTER
        responses[str(s)] = response
    return responses


def _json(schema: dict[str, Any], description: str = "ok") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ORDER_ID = {"name": "order_id", "in": "path", "required": True,
             "schema": {"type": "integer", "minimum": 1}}
_USER_ID = {"name": "user_id", "in": "path", "required": True,
            "schema": {"type": "integer", "minimum": 1}}
_TOKEN_ID = {"name": "token_id", "in": "path", "required": True,
             "schema": {"type": "integer", "minimum": 1}}
_LOCATION = {"Location": {"description": "the new resource, for GET",
                          "schema": {"type": "string"}}}
_ETAG = {"ETag": {"description": 'the order\'s version as a strong entity-tag, such as "3"',
                  "schema": {"type": "string"}}}
_IF_MATCH = {"name": "If-Match", "in": "header",
             "description": 'change only if the order is at one of these ETags ("3", or "*" for'
                            " any version); otherwise 412 and nothing changes. Weak tags never"
                            " match; a malformed value is a 400.",
             "schema": {"type": "string"}}
_IF_NONE_MATCH = {"name": "If-None-Match", "in": "header",
                  "description": "304 (no body) if the order is still at this ETag",
                  "schema": {"type": "string"}}


def _with_headers(response: dict[str, Any], headers: dict[str, Any]) -> dict[str, Any]:
    return {**response, "headers": headers}

_ORDER_INPUT_PROPS: dict[str, Any] = {
    "instrument": {"type": "string", "minLength": 1, "maxLength": MAX_INSTRUMENT},
    "side": {"type": "string", "enum": list(SIDES)},
    "quantity": {"description": "decimal string > 0", "type": "string",
                 "pattern": DECIMAL_TEXT.pattern, "maxLength": MAX_NUMBER_CHARS},
    "price": {"description": "decimal string >= 0", "type": "string",
              "pattern": DECIMAL_TEXT.pattern, "maxLength": MAX_NUMBER_CHARS},
    "status": {"type": "string", "enum": list(STATUSES)},
    "note": {"type": "string", "maxLength": MAX_NOTE},
    "owner_id": {"type": "integer", "minimum": 1, "description": "staff only"},
}

# The DataTables server-side protocol's request (with format=datatables, or as a form
# POST). Its indexed names (order[0][column], columns[0][data], ...) are deep objects.
_DATATABLES_PARAMETERS: list[dict[str, Any]] = [
    {"name": "draw", "in": "query", "description": "DataTables: echoed back as draw",
     "schema": {"type": "integer", "minimum": 0}},
    {"name": "start", "in": "query", "description": "DataTables: the first row's offset",
     "schema": {"type": "integer", "minimum": 0}},
    {"name": "length", "in": "query",
     "description": "DataTables: rows per page; -1 means all, up to the max page size",
     "schema": {"type": "integer", "minimum": -1}},
    {"name": "search[value]", "in": "query", "description": "DataTables: as q",
     "schema": {"type": "string", "maxLength": 200}},
    {"name": "order", "in": "query", "style": "deepObject", "explode": True,
     "description": "DataTables: order[i][column] (an index into columns) and order[i][dir]"
                    " (asc or desc); bad indexes are ignored",
     "schema": {"type": "object"}},
    {"name": "columns", "in": "query", "style": "deepObject", "explode": True,
     "description": "DataTables: columns[i][data] (a column name: "
                    + ", ".join(SORT_COLUMNS) + ") and columns[i][orderable]",
     "schema": {"type": "object"}},
]

_TIME_OR_NULL = {"type": ["string", "null"], "format": "date-time"}
_TOKEN: dict[str, Any] = {
    "type": "object", "required": ["id", "name", "created_at", "last_used_at"],
    "properties": {"id": {"type": "integer"}, "name": {"type": "string"},
                   "created_at": {"type": "string", "format": "date-time"},
                   "last_used_at": {**_TIME_OR_NULL,
                                    "description": "updated at most once a minute"}},
}

SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "orderstream",
        "version": "1",
        "description": "Orders in PostgreSQL, live over /ws. Regular users see only their own "
                       "orders (another user's order id answers 404); staff see all. Cookie "
                       "sessions must send X-CSRF-Token on unsafe requests; programs use "
                       "Authorization: Bearer <token> from `python server.py token NAME` or "
                       "POST /api/tokens. Every 401 carries WWW-Authenticate: Bearer. An "
                       "order's ETag is its version (\"3\"); PATCH and DELETE take If-Match "
                       "(412 when stale, 400 when malformed). Every 201 carries Location.",
    },
    "servers": [{"url": "/"}],
    "security": [{"bearer": []}, {"cookie": []}],
    "paths": {
        "/api/orders": {
            "get": {
                "operationId": "listOrders",
                "summary": "A page of orders; with format=datatables, the DataTables "
                           "server-side protocol (length=-1 means up to the max page size).",
                "parameters": [
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                                "maximum": 1000}},
                    {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0,
                                                                 "maximum": 10**9}},
                    {"name": "sort", "in": "query",
                     "description": "comma-separated columns, '-' prefix for descending: "
                                    + ", ".join(SORT_COLUMNS),
                     "schema": {"type": "string", "pattern": _SORT_PATTERN}},
                    {"name": "q", "in": "query", "description": "search words, ANDed",
                     "schema": {"type": "string", "maxLength": 200}},
                    {"name": "owner", "in": "query", "description": "staff only: a user id or *",
                     "schema": {"type": "string", "pattern": r"^(\*|[1-9][0-9]{0,17})$"}},
                    {"name": "status", "in": "query",
                     "description": "exact status (q=filled also finds partially_filled;"
                                    " status=filled does not)",
                     "schema": {"type": "string", "enum": list(STATUSES)}},
                    {"name": "side", "in": "query", "description": "exact side",
                     "schema": {"type": "string", "enum": list(SIDES)}},
                    {"name": "instrument", "in": "query",
                     "description": "exact instrument, case-sensitive",
                     "schema": {"type": "string", "minLength": 1,
                                "maxLength": MAX_INSTRUMENT}},
                    {"name": "format", "in": "query",
                     "schema": {"type": "string", "enum": ["datatables"]}},
                    *_DATATABLES_PARAMETERS,
                ],
                "responses": {
                    "200": _json({"oneOf": [{"$ref": "#/components/schemas/OrderPage"},
                                            {"$ref": "#/components/schemas/DataTablesPage"}]}),
                    **_errors(400, 401, 403),
                },
            },
            "post": {
                "operationId": "createOrder",
                "summary": "Create an order (JSON). A form-encoded body with draw is a "
                           "DataTables list request instead (answered 200 with a "
                           "DataTablesPage); any other form body is a 415.",
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": {
                        "type": "object", "required": ["instrument", "quantity", "price"],
                        "properties": _ORDER_INPUT_PROPS, "additionalProperties": False}},
                    "application/x-www-form-urlencoded": {"schema": {
                        "type": "object", "required": ["draw"],
                        "properties": {p["name"]: p["schema"] for p in _DATATABLES_PARAMETERS
                                       if p.get("style") is None}}}}},
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/DataTablesPage"},
                                 "a DataTables page (form-encoded body)"),
                    "201": _with_headers(
                        _json({"$ref": "#/components/schemas/Order"}, "created"),
                        {**_LOCATION, **_ETAG}),
                    **_errors(400, 401, 403, 409, 413, 415, 422)},
            },
        },
        "/api/orders/{order_id}": {
            "parameters": [_ORDER_ID],
            "get": {"operationId": "getOrder",
                    "parameters": [_IF_NONE_MATCH],
                    "responses": {"200": _with_headers(
                        _json({"$ref": "#/components/schemas/Order"}), _ETAG),
                        "304": {"description": "not modified", "headers": _ETAG},
                        **_errors(400, 401, 404)}},
            "patch": {
                "operationId": "updateOrder",
                "summary": "Change some fields; send If-Match (412) or `version` (409) to "
                           "refuse if it moved on. A row held by another transaction answers "
                           "409 `locked` with Retry-After once `api_lock_timeout_ms` has passed.",
                "parameters": [_IF_MATCH],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object",
                    "properties": {**_ORDER_INPUT_PROPS,
                                   "version": {"type": "integer", "minimum": 1}},
                    "additionalProperties": False}}}},
                "responses": {"200": _with_headers(
                    _json({"$ref": "#/components/schemas/Order"}), _ETAG),
                    **_errors(400, 401, 403, 404, 409, 412, 413, 415, 422)},
            },
            "delete": {"operationId": "deleteOrder",
                       "parameters": [_IF_MATCH],
                       "responses": {"204": {"description": "deleted"},
                                     **_errors(400, 401, 403, 404, 409, 412)}},
        },
        "/api/quotes": {
            "get": {
                "operationId": "listQuotes",
                "summary": "instruments with their current quote; unknown names are listed"
                           " under unknown, not refused",
                "parameters": [{"name": "instruments", "in": "query",
                                "description": "comma-separated symbols (at most 200);"
                                               " absent: every instrument (at most 1000)",
                                "schema": {"type": "string"}}],
                "responses": {"200": _json({"$ref": "#/components/schemas/QuotePage"}),
                              **_errors(400, 401)},
            },
        },
        "/api/pnl": {
            "get": {
                "operationId": "unrealisedPnl",
                "summary": "unrealised P&L of all your filled and partially filled orders",
                "responses": {"200": _json({
                    "type": "object", "required": ["total", "priced", "unpriced"],
                    "properties": {"total": _DECIMAL, "priced": {"type": "integer"},
                                   "unpriced": {"type": "integer"}}}),
                    **_errors(401)},
            },
        },
        "/api/users": {
            "get": {"operationId": "listUsers", "summary": "staff only",
                    "responses": {"200": _json({"type": "object", "properties": {"items": {
                        "type": "array", "items": {"$ref": "#/components/schemas/User"}}}}),
                        **_errors(401, 404)}},
            "post": {
                "operationId": "createUser", "summary": "staff only",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["username", "password"],
                    "properties": {"username": {"type": "string"},
                                   "password": {"type": "string", "minLength": 8},
                                   "is_staff": {"type": "boolean"}},
                    "additionalProperties": False}}}},
                "responses": {"201": _with_headers(
                    _json({"$ref": "#/components/schemas/User"}, "created"), _LOCATION),
                    **_errors(400, 401, 403, 404, 409, 413, 415, 422)},
            },
        },
        "/api/users/{user_id}": {
            "parameters": [_USER_ID],
            "get": {"operationId": "getUser", "summary": "staff only",
                    "responses": {"200": _json({"$ref": "#/components/schemas/User"}),
                                  **_errors(401, 404)}},
            "patch": {
                "operationId": "updateUser", "summary": "staff only: make staff, reset password",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object",
                    "properties": {"password": {"type": "string", "minLength": 8},
                                   "is_staff": {"type": "boolean"}},
                    "additionalProperties": False}}}},
                "responses": {"200": _json({"$ref": "#/components/schemas/User"}),
                              **_errors(400, 401, 403, 404, 409, 413, 415, 422)},
            },
        },
        "/api/users/{user_id}/tokens": {
            "parameters": [_USER_ID],
            "delete": {"operationId": "revokeTokens", "summary": "staff only",
                       "responses": {"200": _json({"type": "object", "properties": {
                           "revoked": {"type": "integer"}}}), **_errors(401, 403, 404, 409)}},
        },
        "/api/tokens": {
            "get": {"operationId": "listTokens", "summary": "your own active API tokens",
                    "responses": {"200": _json({"type": "object", "required": ["items"],
                                                "properties": {"items": {
                                                    "type": "array", "items": _TOKEN}}}),
                                  **_errors(401)}},
            "post": {
                "operationId": "createToken",
                "summary": "a new API token for yourself; the secret (`token`) is in this "
                           "answer only",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["name"],
                    "properties": {"name": {"type": "string", "minLength": 1,
                                            "maxLength": MAX_TOKEN_NAME}},
                    "additionalProperties": False}}}},
                "responses": {"201": _with_headers(_json({"$ref": "#/components/schemas/NewToken"},
                                                         "created"), _LOCATION),
                              **_errors(400, 401, 403, 409, 413, 415, 422)},
            },
        },
        "/api/tokens/{token_id}": {
            "parameters": [_TOKEN_ID],
            "get": {"operationId": "getToken", "summary": "one of your own active tokens",
                    "responses": {"200": _json(_TOKEN), **_errors(401, 404)}},
            "delete": {"operationId": "revokeToken",
                       "summary": "revoke one of your own tokens: its sockets close (1008) and "
                                  "it answers 401 from then on; another user's token is a 404",
                       "responses": {"204": {"description": "revoked"},
                                     **_errors(401, 403, 404, 409)}},
        },
    },
    "components": {
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "cookie": {"type": "apiKey", "in": "cookie", "name": "orderstream_session"},
        },
        "schemas": {
            "Order": {
                "type": "object",
                "required": ["id", "owner_id", "owner", "instrument", "side", "quantity",
                             "price", "status", "version", "created_at", "updated_at"],
                "properties": {
                    "id": {"type": "integer"}, "owner_id": {"type": "integer"},
                    "owner": {"type": ["string", "null"]}, "instrument": {"type": "string"},
                    "side": {"type": "string", "enum": list(SIDES)},
                    "quantity": _DECIMAL, "price": _DECIMAL,
                    "status": {"type": "string", "enum": list(STATUSES)},
                    "note": {"type": "string"}, "version": {"type": "integer"},
                    "created_at": {"type": "string", "format": "date-time"},
                    "updated_at": {"type": "string", "format": "date-time"},
                },
            },
            "OrderPage": {
                "type": "object", "required": ["items", "total", "filtered", "seq"],
                "properties": {"items": {"type": "array",
                                         "items": {"$ref": "#/components/schemas/Order"}},
                               "total": {"type": "integer"}, "filtered": {"type": "integer"},
                               "seq": {"type": "integer"}, "limit": {"type": "integer"},
                               "offset": {"type": "integer"}},
            },
            "DataTablesPage": {
                "type": "object", "required": ["draw", "recordsTotal", "recordsFiltered", "data"],
                "properties": {"draw": {"type": "integer"}, "recordsTotal": {"type": "integer"},
                               "recordsFiltered": {"type": "integer"},
                               "data": {"type": "array", "items": {"type": "object"}},
                               "seq": {"type": "integer"}},
            },
            "Quote": {
                "type": "object",
                "required": ["instrument", "name", "tick_size", "bid", "ask", "last", "version",
                             "ts"],
                "properties": {
                    "instrument": {"type": "string"}, "name": {"type": "string"},
                    "tick_size": _DECIMAL,
                    "bid": {"anyOf": [_DECIMAL, {"type": "null"}]},
                    "ask": {"anyOf": [_DECIMAL, {"type": "null"}]},
                    "last": {"anyOf": [_DECIMAL, {"type": "null"}]},
                    "version": {"type": ["integer", "null"],
                                "description": "rises with every write of the quote"},
                    "ts": {"type": ["number", "null"], "description": "epoch ms of the update"},
                },
            },
            "QuotePage": {
                "type": "object", "required": ["items", "unknown"],
                "properties": {"items": {"type": "array",
                                         "items": {"$ref": "#/components/schemas/Quote"}},
                               "unknown": {"type": "array", "items": {"type": "string"}}},
            },
            "User": {
                "type": "object",
                "properties": {"id": {"type": "integer"}, "username": {"type": "string"},
                               "is_staff": {"type": "boolean"},
                               "created_at": {"type": "string", "format": "date-time"},
                               "tokens": {"type": "integer"}},
            },
            "NewToken": {
                "type": "object", "required": [*_TOKEN["required"], "token"],
                "properties": {**_TOKEN["properties"],
                               "token": {"type": "string", "description": "the secret, once"}},
            },
            "Error": {
                "type": "object", "required": ["error"],
                "properties": {"error": {
                    "type": "object", "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                                   "fields": {"type": "object",
                                              "additionalProperties": {"type": "string"}}}}},
            },
        },
    },
}


async def openapi_json(request: Request) -> Response:
    return JSONResponse(SPEC)


routes = [Route("/api/openapi.json", openapi_json, methods=["GET"])]
