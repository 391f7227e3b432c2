"""Refusals at the /ws handshake: a 503 when the database could not say who is asking, and
the per-user cap on open sockets."""

from __future__ import annotations

from starlette.websockets import WebSocket

from web.errors import ApiError, error_response

# The ASGI extension that lets an app answer a handshake with an HTTP response.
DENIAL_EXTENSION = "websocket.http.response"
# Close code for a socket past `max_sockets_per_user` (4000-4999 are the application's;
# 4429 echoes HTTP 429): close another socket of that user, or retry later.
TOO_MANY_SOCKETS = 4429
# RFC 6455 "try again later": the fallback for a server without the denial extension.
TRY_AGAIN_LATER = 1013


async def deny(websocket: WebSocket, error: ApiError) -> None:
    """Refuse the handshake with `error` as an HTTP answer (its status, Retry-After and the
    JSON error shape), as uvicorn supports; where a server lacks that, accept and close with
    1013 so the client still learns to retry rather than seeing a plain 403."""
    if DENIAL_EXTENSION in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(
            error_response(error.status, error.code, error.message, error.fields, error.headers))
        return
    await websocket.accept()
    await websocket.close(code=TRY_AGAIN_LATER, reason=error.message[:120])


def too_many_sockets(open_sockets: int, limit: int) -> bool:
    """Whether a user with `open_sockets` registered (this one included) is past `limit`
    (0: no limit)."""
    return 0 < limit < open_sockets
