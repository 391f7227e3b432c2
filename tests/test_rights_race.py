"""A socket whose rights change between its handshake's credential check and its joining the
hub is not forgotten: the hub applies a rights change only to the sockets it has, so such a
socket checks its own rights once it joins. Without that, a token revoked at that moment
would keep a live feed of its user's orders.

The moment is made certain by the server running in this process: right after the
handshake's credentials are read, the test revokes the token and waits until the server has
applied the revocation. Everything else is real: port, socket, database."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import websockets
from starlette.requests import HTTPConnection

from tests.support.in_process import serving_in_process
from web.auth import TokenOrSessionBackend


async def test_a_token_revoked_during_the_handshake_closes_its_socket(
        db_url: str, tmp_path: Path, make_user: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    user = make_user()
    authenticate = TokenOrSessionBackend._authenticate
    armed = {"on": True}

    async def authenticate_then_revoke(self: TokenOrSessionBackend,
                                       conn: HTTPConnection) -> Any:
        found = await authenticate(self, conn)
        if armed["on"] and conn.scope["type"] == "websocket":
            armed["on"] = False
            listener = conn.state.listener
            applied = listener.rights_epoch
            await conn.state.pool.execute(
                "UPDATE api_tokens SET revoked_at = now() WHERE user_id = $1", user.id)
            deadline = time.monotonic() + 10
            while listener.rights_epoch == applied:
                assert time.monotonic() < deadline, "the revocation was never heard"
                await asyncio.sleep(0.01)
        return found

    monkeypatch.setattr(TokenOrSessionBackend, "_authenticate", authenticate_then_revoke)
    async with (serving_in_process(db_url, tmp_path) as address,
                websockets.connect(address.ws_url, additional_headers=user.auth,
                                   open_timeout=5) as conn):
        assert not armed["on"]
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:  # whatever came before the close (nothing should)
                await asyncio.wait_for(conn.recv(), 5)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, "token revoked")


async def test_a_socket_whose_rights_did_not_change_is_served(
        db_url: str, tmp_path: Path, make_user: Any) -> None:
    user = make_user()
    async with (serving_in_process(db_url, tmp_path) as address,
                websockets.connect(address.ws_url, additional_headers=user.auth,
                                   open_timeout=5) as conn):
        await conn.send('{"op": "ping", "id": 1}')
        assert await asyncio.wait_for(conn.recv(), 5) == '{"type": "pong", "id": 1}'
