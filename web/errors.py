"""The one JSON error shape, the domain error that carries it, and the handlers.

Every error the API returns is {"error": {"code", "message", "fields"?}} with a
4xx status, or 503 (with Retry-After) when the database is too busy to answer in time or
cannot be reached; database errors are translated here, at the edge.
"""

from __future__ import annotations

import json
import logging
from decimal import Decimal
from typing import Any

import asyncpg
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from db.failures import unreachable
from db.pool import PoolBusy
from db.text import USERNAME_RULE

try:
    from uvicorn.protocols.utils import ClientDisconnected
except ImportError:  # another server: it raises its own, or none
    class ClientDisconnected(OSError):  # type: ignore[no-redef]
        """Never raised: stands in for uvicorn's."""

log = logging.getLogger(__name__)


def _described(request: Request) -> str:
    """"GET /api/orders", or "WebSocket /ws": these handlers also see WebSocket handshakes."""
    return f"{request.scope.get('method', 'WebSocket')} {request.url.path}"


class ApiError(Exception):
    """A request the API refuses, with the status and JSON error to answer."""

    def __init__(self, status: int, code: str, message: str,
                 fields: dict[str, str] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields
        self.headers = headers


# Seconds a client should wait before retrying a request refused for a lock or a busy pool:
# about two lock timeouts, long enough for a short lock to go, short enough not to stall.
RETRY_AFTER = {"Retry-After": "1"}


def busy_error(exc: PoolBusy) -> ApiError:
    """503 for a request that got no database connection (or write slot) in time."""
    return ApiError(503, "busy", f"the server is busy: {exc}; retry shortly",
                    headers=RETRY_AFTER)


def unavailable_error() -> ApiError:
    """503 for a request the database could not serve: closed to connections, down,
    restarting, or it dropped the connection mid-query."""
    return ApiError(503, "unavailable", "the database is unavailable; retry shortly",
                    headers=RETRY_AFTER)


def failure_error(exc: BaseException) -> ApiError:
    """The 503 for a database failure met before a route ran (authenticating, say)."""
    if isinstance(exc, PoolBusy):
        return busy_error(exc)
    if isinstance(exc, asyncpg.QueryCanceledError):
        return ApiError(503, "timeout", "the database cancelled the query; retry shortly",
                        headers=RETRY_AFTER)
    return unavailable_error()


async def unreachable_handler(request: Request, exc: Exception) -> Response:
    """The database could not be reached or dropped the connection: 503, one log line."""
    if isinstance(exc, ClientDisconnected):
        # A client that left during its WebSocket handshake (uvicorn raises this OSError on
        # a send to it): nobody to answer, and uvicorn lets it go without a word.
        raise exc
    log.warning("database unavailable on %s: %s: %s", _described(request),
                type(exc).__name__, exc)
    return await api_error_handler(request, unavailable_error())


async def pool_busy_handler(request: Request, exc: Exception) -> Response:
    """A request that found no database connection in time, wherever it asked for one."""
    assert isinstance(exc, PoolBusy)
    return await api_error_handler(request, busy_error(exc))


def shown(value: Any, limit: int = 80) -> str:
    """A value a client sent, for an error message, in JSON's terms: null, true, 1.5 (a
    number parsed as Decimal stays a number), "text" (cut at `limit` characters, escaped as
    JSON escapes it, a lone surrogate included, so the message can be encoded), and an array
    or an object named, not dumped (however deep or big it is)."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int | float | Decimal):
        text = str(value) if isinstance(value, int | Decimal) else json.dumps(value)
        return text if len(text) <= limit else text[:limit] + "..."
    if isinstance(value, str):
        cut = value if len(value) <= limit else value[:limit]
        text = json.dumps(cut, ensure_ascii=False)
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
        return text if cut is value else text[:-1] + '..."'
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def error_body(code: str, message: str, fields: dict[str, str] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if fields:
        error["fields"] = fields
    return {"error": error}


def error_response(status: int, code: str, message: str,
                   fields: dict[str, str] | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message, fields), status_code=status, headers=headers)


_HTTP_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 409: "conflict", 413: "too_large", 415: "unsupported_media_type",
    422: "invalid", 429: "too_many_requests",
}

# Constraint name -> (field, what was expected), for check violations from any writer.
_CONSTRAINT_FIELDS = {
    "orders_quantity_positive": ("quantity", "must be a finite number greater than 0"),
    "orders_price_not_negative": ("price", "must be a finite number of at least 0"),
    "orders_side_known": ("side", "must be 'buy' or 'sell'"),
    "orders_status_known": ("status", "is not a known status"),
    "orders_instrument_not_blank": ("instrument", "must not be blank"),
    "orders_owner_id_fkey": ("owner_id", "no such user"),
    "users_username_format": ("username", USERNAME_RULE),
    "users_username_key": ("username", "is taken"),
    "quotes_numbers_fit": ("bid", "bid, ask and last must be at most 40 characters as text"),
}


def _wants_json(request: Request) -> bool:
    path = request.url.path
    return path == "/api" or path.startswith("/api/") or "application/json" in request.headers.get(
        "accept", ""
    )


async def api_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.fields, exc.headers)


async def http_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if not _wants_json(request):
        return PlainTextResponse(str(exc.detail), status_code=exc.status_code, headers=exc.headers)
    code = _HTTP_CODES.get(exc.status_code, "error")
    return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)


async def database_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, asyncpg.PostgresError)
    if unreachable(exc):
        return await unreachable_handler(request, exc)
    constraint = getattr(exc, "constraint_name", None)
    field = _CONSTRAINT_FIELDS.get(constraint or "")
    fields = {field[0]: field[1]} if field else None
    if isinstance(exc, asyncpg.UniqueViolationError):
        return error_response(409, "conflict", "already exists", fields)
    if isinstance(exc, asyncpg.ForeignKeyViolationError):
        if constraint == "orders_owner_id_fkey" and "still referenced" in str(exc):
            return error_response(409, "conflict", "the user still owns orders")
        return error_response(422, "invalid", "refers to something that does not exist", fields)
    if isinstance(exc, asyncpg.CheckViolationError | asyncpg.NotNullViolationError):
        return error_response(422, "invalid", str(exc).split("\n")[0], fields)
    if isinstance(exc, asyncpg.DataError):
        return error_response(422, "invalid", str(exc).split("\n")[0])
    if isinstance(exc, asyncpg.exceptions.SerializationError | asyncpg.DeadlockDetectedError):
        return error_response(409, "conflict", "concurrent change, retry")
    if isinstance(exc, asyncpg.LockNotAvailableError):  # 55P03: waited lock_timeout for a lock
        return error_response(409, "locked", f"{_locked_what(request)} is locked by another"
                              " transaction; retry shortly", headers=RETRY_AFTER)
    if isinstance(exc, asyncpg.QueryCanceledError):  # 57014: statement_timeout, or an operator
        why = ("it ran longer than the statement timeout" if "statement timeout" in str(exc)
               else "an operator cancelled it")
        return error_response(503, "timeout", f"the database cancelled the query: {why};"
                              " retry shortly", headers=RETRY_AFTER)
    log.exception("database error on %s", _described(request))
    return error_response(503, "database_error", "the database could not complete the request",
                          headers=RETRY_AFTER)


def _locked_what(request: Request) -> str:
    order_id = request.path_params.get("order_id")
    if order_id is not None:
        return f"order {order_id}"
    user_id = request.path_params.get("user_id")
    if user_id is not None:
        return f"user {user_id}"
    return "a row this request changes"


async def unexpected_error_handler(request: Request, exc: Exception) -> Response:
    # Raised outside the routes (in the auth middleware, say), these reach this handler
    # rather than their own: answer them the same way.
    if isinstance(exc, PoolBusy):
        return await api_error_handler(request, busy_error(exc))
    if isinstance(exc, asyncpg.PostgresError):
        return await database_error_handler(request, exc)
    if unreachable(exc):
        return await unreachable_handler(request, exc)
    log.exception("unhandled error on %s", _described(request), exc_info=exc)
    return error_response(500, "internal_error", "internal error")
