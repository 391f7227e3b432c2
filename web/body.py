"""The cap on request bodies, for every path at once: 413 before reading past 64 KiB."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from web.errors import ApiError, error_response

# Bytes a request body may have: far above any order, user or DataTables form (a request
# for 11 columns is about 3 KiB), far below what would cost memory to buffer.
MAX_BODY_BYTES = 64 * 1024


def too_large(limit: int) -> ApiError:
    return ApiError(413, "too_large", f"the request body is larger than {limit} bytes")


class BodyLimit:
    """ASGI middleware: a request whose Content-Length passes `limit` is answered 413 at
    once, before any of its body is read (and before authentication queries the database);
    one without Content-Length (chunked) is counted as the app reads it, and the read that
    passes `limit` raises the 413 (an ApiError, answered by the error handlers) instead of
    returning the chunk. So no route, form parser or JSON reader can buffer more."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            error = too_large(self.limit)
            # The server discards the rest of the body as it arrives, never buffering it;
            # closing the connection instead could reset it before the client reads the 413.
            await error_response(error.status, error.code, error.message)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise too_large(self.limit)
            return message

        await self.app(scope, counted, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            # The server (h11, httptools) has refused a malformed one already.
            return int(value) if value.isdigit() else None
    return None
