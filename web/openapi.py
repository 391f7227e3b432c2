"""GET /api/openapi.json: the JSON API described as OpenAPI 3.1."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from db.queries import SORT_COLUMNS
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
    "description": "seconds to wait before retrying (a locked row, a busy database)",
    "schema": {"type": "integer", "minimum": 0}}}
# Every operation may meet a busy database: 503 with Retry-After ("busy", "timeout").
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

SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "orderstream",
        "version": "1",
        "description": "Orders in PostgreSQL, live over /ws. Regular users see only their own "
                       "orders (another user's order id answers 404); staff see all. Cookie "
                       "sessions must send X-CSRF-Token on unsafe requests; programs use "
                       "Authorization: Bearer <token> from `python server.py token NAME`.",
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
                    {"name": "format", "in": "query",
                     "schema": {"type": "string", "enum": ["datatables"]}},
                ],
                "responses": {
                    "200": _json({"oneOf": [{"$ref": "#/components/schemas/OrderPage"},
                                            {"$ref": "#/components/schemas/DataTablesPage"}]}),
                    **_errors(400, 401, 403),
                },
            },
            "post": {
                "operationId": "createOrder",
                "summary": "Create an order (JSON). A form-encoded body is a DataTables list "
                           "request instead.",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["instrument", "quantity", "price"],
                    "properties": _ORDER_INPUT_PROPS, "additionalProperties": False}}}},
                "responses": {"201": _json({"$ref": "#/components/schemas/Order"}, "created"),
                              **_errors(400, 401, 403, 409, 413, 415, 422)},
            },
        },
        "/api/orders/{order_id}": {
            "parameters": [_ORDER_ID],
            "get": {"operationId": "getOrder",
                    "responses": {"200": _json({"$ref": "#/components/schemas/Order"}),
                                  **_errors(401, 404)}},
            "patch": {
                "operationId": "updateOrder",
                "summary": "Change some fields; send `version` to refuse (409) if it moved on. "
                           "A row held by another transaction answers 409 `locked` with "
                           "Retry-After once `api_lock_timeout_ms` has passed.",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object",
                    "properties": {**_ORDER_INPUT_PROPS,
                                   "version": {"type": "integer", "minimum": 1}},
                    "additionalProperties": False}}}},
                "responses": {"200": _json({"$ref": "#/components/schemas/Order"}),
                              **_errors(400, 401, 403, 404, 409, 413, 415, 422)},
            },
            "delete": {"operationId": "deleteOrder",
                       "responses": {"204": {"description": "deleted"},
                                     **_errors(401, 403, 404, 409)}},
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
                "responses": {"201": _json({"$ref": "#/components/schemas/User"}, "created"),
                              **_errors(400, 401, 403, 404, 409, 413, 415, 422)},
            },
        },
        "/api/users/{user_id}": {
            "parameters": [_USER_ID],
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
            "User": {
                "type": "object",
                "properties": {"id": {"type": "integer"}, "username": {"type": "string"},
                               "is_staff": {"type": "boolean"},
                               "created_at": {"type": "string", "format": "date-time"},
                               "tokens": {"type": "integer"}},
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
