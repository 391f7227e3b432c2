"""Python's garbage collector in the server: a socket's objects go when it does, by reference
counting, none waiting for the collector, whose full pass with 10,000 sockets open stalls
every socket for up to a second; and its full passes skip the heap made at startup
(docs/benchmarks.md, "Garbage").

The app runs in this process, on a real port, with the protocol options server.py gives
uvicorn, so the test can look at the server's own objects. The collector is off while it
looks: an object that only a collection would free is still there to be found."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import types
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from db.listener import Listener
from db.pool import ApiPool
from tests.conftest import Socket, User
from tests.support.in_process import InProcess, serving_in_process
from web.hub import Hub
from web.subscriber import Subscriber

SOCKETS_PER_USER = 3
# The server's objects of one connection: the HTTP protocol that read its first request,
# the WebSocket protocol it became, and the hub's registration.
SERVER_SIDE = (HttpToolsProtocol, WebSocketsSansIOProtocol, Subscriber)


def _alive(kind: type | tuple[type, ...] = SERVER_SIDE) -> list[Any]:
    # type(), not isinstance(): a dead weak proxy among the objects raises on the latter.
    return [o for o in gc.get_objects() if issubclass(type(o), kind)]


async def _until_gone(timeout: float = 5.0) -> list[Any]:
    """Wait for the server to finish with its closed sockets: what of theirs is left."""
    deadline = time.monotonic() + timeout
    while (left := _alive()) and time.monotonic() < deadline:
        del left
        await asyncio.sleep(0.02)
    return _alive()


@pytest.fixture
def collector_off() -> Iterator[None]:
    was_on = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()
        gc.collect()


@pytest.fixture
async def in_process(db_url: str, tmp_path: Path) -> AsyncIterator[InProcess]:
    async with serving_in_process(
            db_url, tmp_path,
            ORDERSTREAM_MAX_SOCKETS_PER_USER=str(SOCKETS_PER_USER)) as address:
        yield address


@contextlib.asynccontextmanager
async def _subscribed(address: InProcess, user: User) -> AsyncIterator[Socket]:
    async with websockets.connect(address.ws_url, additional_headers=user.auth,
                                  open_timeout=5) as conn:
        ws = Socket(conn)
        await ws.subscribe_orders()
        yield ws


async def test_an_open_socket_keeps_no_http_protocol(
        in_process: InProcess, make_user: Any, collector_off: None) -> None:
    user = make_user()
    async with _subscribed(in_process, user), _subscribed(in_process, user):
        # Proof the look can fail: the open sockets' own objects are found.
        assert len(_alive(WebSocketsSansIOProtocol)) == 2
        assert len(_alive(Subscriber)) == 2
        # The HTTP protocol that read each upgrade request is gone once it handed over.
        assert _alive(HttpToolsProtocol) == []


async def test_an_open_socket_keeps_neither_middleware_nor_handshake(
        in_process: InProcess, make_user: Any, collector_off: None) -> None:
    """Once accepted, a socket's conversation runs outside the middleware chain (web/ws.py,
    run_socket), and its protocol lets go of the handshake's request and response: none of
    it is left for each full pass of the collector to read."""
    def coroutines_of(path: str) -> list[str]:
        return [o.cr_code.co_qualname for o in gc.get_objects()
                if type(o) is types.CoroutineType and path in o.cr_code.co_filename]

    user = make_user()
    async with _subscribed(in_process, user), _subscribed(in_process, user):
        # Proof the look can fail: the conversations' own coroutines are found.
        assert coroutines_of("web/ws.py").count("_converse") == 2
        assert coroutines_of("starlette") == ["WebSocket.receive", "WebSocket.receive"]
        assert [o for o in _alive(WebSocketsSansIOProtocol)
                if getattr(o, "request", None) or getattr(o, "response", None)] == []


async def test_closed_sockets_leave_nothing_for_the_collector(
        in_process: InProcess, make_user: Any, collector_off: None) -> None:
    user, other = make_user(), make_user()
    # The client closes.
    async with _subscribed(in_process, user):
        pass
    # The client's connection drops without a close.
    async with _subscribed(in_process, user) as ws:
        ws.conn.transport.abort()
    # The server closes: one socket past the user's limit.
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(SOCKETS_PER_USER):
            await stack.enter_async_context(_subscribed(in_process, other))
        async with websockets.connect(in_process.ws_url, additional_headers=other.auth,
                                      open_timeout=5) as conn:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(conn.recv(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4429
    # The server refuses the handshake.
    with pytest.raises(websockets.InvalidStatus):
        await websockets.connect(in_process.ws_url,
                                 additional_headers={"Authorization": "Bearer nope"},
                                 open_timeout=5)
    # Plain HTTP on a kept-alive connection.
    async with httpx.AsyncClient(base_url=in_process.base_url, headers=user.auth) as client:
        assert (await client.get("/api/orders")).status_code == 200
        assert (await client.post("/api/orders", json={})).status_code == 422

    left = await _until_gone()
    assert left == [], f"kept for the garbage collector: {[type(o).__name__ for o in left]}"


async def test_full_passes_skip_what_the_server_made_at_startup(
        db_url: str, tmp_path: Path, collector_off: None) -> None:
    assert gc.get_freeze_count() == 0
    async with serving_in_process(db_url, tmp_path):
        # Modules, the app, its pools and hub (and, in this process, pytest's own objects):
        # out of the collector's reach, so no full pass reads them.
        frozen = gc.get_freeze_count()
        assert frozen > 20_000, frozen
        # The server's own, made in its lifespan, among them (get_objects() leaves frozen
        # objects out).
        assert not any(issubclass(type(o), (Hub, ApiPool, Listener)) for o in gc.get_objects())
        assert len(gc.get_objects()) < frozen / 4
    # A server stopped in this process leaves the collector as it found it.
    assert gc.get_freeze_count() == 0
