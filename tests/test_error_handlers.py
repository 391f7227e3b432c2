"""The app's exception handlers also see WebSocket handshakes (Starlette hands them the
WebSocket): they answer a database failure there with a 503 like any request, and let a
client that left mid-handshake go without a traceback."""

from __future__ import annotations

import logging

import pytest
from starlette.websockets import WebSocket
from uvicorn.protocols.utils import ClientDisconnected

from web.errors import unexpected_error_handler, unreachable_handler


def _handshake() -> WebSocket:
    scope = {"type": "websocket", "path": "/ws", "raw_path": b"/ws", "query_string": b"",
             "headers": [(b"host", b"127.0.0.1:8000")], "scheme": "ws",
             "server": ("127.0.0.1", 8000), "root_path": ""}

    async def never(*_: object) -> dict[str, str]:
        raise AssertionError("a handler must only describe the handshake, not talk on it")

    return WebSocket(scope, never, never)


async def test_a_client_gone_mid_handshake_is_let_go() -> None:
    gone = ClientDisconnected()
    with pytest.raises(ClientDisconnected) as raised:
        await unreachable_handler(_handshake(), gone)  # type: ignore[arg-type]
    assert raised.value is gone  # uvicorn ignores exactly this one


async def test_the_database_away_during_a_handshake_is_a_503_with_one_log_line(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="web.errors"):
        response = await unexpected_error_handler(  # type: ignore[arg-type]
            _handshake(), ConnectionRefusedError(111, "Connection refused"))
    assert response.status_code == 503
    assert [r.getMessage() for r in caplog.records] == [
        "database unavailable on WebSocket /ws: ConnectionRefusedError:"
        " [Errno 111] Connection refused"]


async def test_a_bug_during_a_handshake_is_logged_with_its_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="web.errors"):
        response = await unexpected_error_handler(  # type: ignore[arg-type]
            _handshake(), KeyError("oops"))
    assert response.status_code == 500
    (record,) = caplog.records
    assert record.getMessage() == "unhandled error on WebSocket /ws"
    assert record.exc_info is not None and record.exc_info[0] is KeyError
