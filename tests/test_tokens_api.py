"""API tokens over HTTP (create shows the secret once, list own, revoke own) and the token
as a WebSocket subprotocol for third-party pages."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from tests.conftest import (
    ServerProcess,
    Socket,
    User,
    insert_order,
    login,
    open_socket,
    running_server,
)

THIRD_PARTY = "https://widgets.example"


async def new_token(http: httpx.AsyncClient, user: User, name: str = "ci") -> dict[str, Any]:
    response = await http.post("/api/tokens", json={"name": name}, headers=user.auth)
    assert response.status_code == 201, response.text
    assert response.headers["location"] == f"/api/tokens/{response.json()['id']}"
    assert response.headers["cache-control"] == "no-store"
    return response.json()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def expect_close(socket: Socket, code: int) -> str:
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:  # frames queued before the close may still arrive
            await asyncio.wait_for(socket.conn.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == code
    return closed.value.rcvd.reason


@pytest.fixture
def second_server(db_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    """Another server process on the same database, trusting a third-party page's Origin."""
    with running_server(db_url, tmp_path, ORDERSTREAM_ALLOWED_ORIGINS=THIRD_PARTY) as proc:
        yield proc


async def test_token_lifecycle_across_server_processes(server, second_server, http, make_user,
                                                       sql):
    alice = make_user()
    created = await new_token(http, alice, "laptop")
    secret = created.pop("token")
    assert set(created) == {"id", "name", "created_at", "last_used_at"}
    assert created["name"] == "laptop" and created["last_used_at"] is None

    # The list shows it, never the secret nor its hash.
    listed = (await http.get("/api/tokens", headers=alice.auth)).json()["items"]
    assert created in listed and all(set(t) == set(created) for t in listed)
    assert secret not in str(listed)
    stored = sql.execute("SELECT name, token_hash FROM api_tokens WHERE id = %s",
                         (created["id"],)).fetchone()
    assert stored is not None and stored[0] == "laptop" and secret.encode() not in stored[1]

    # It works, and its use is recorded.
    assert (await http.get("/api/orders", headers=bearer(secret))).status_code == 200
    used = (await http.get(f"/api/tokens/{created['id']}", headers=alice.auth)).json()
    assert used["last_used_at"] is not None

    # Revoked through the other server process: the socket on this one closes with 1008.
    async with open_socket(server, headers=bearer(secret)) as ws:
        await ws.subscribe_orders()
        async with httpx.AsyncClient(base_url=second_server.base_url) as other:
            revoked = await other.delete(f"/api/tokens/{created['id']}", headers=alice.auth)
        assert revoked.status_code == 204 and not revoked.content
        insert_order(sql, alice.id, "AFTER-REVOKE")
        assert await expect_close(ws, 1008) == "token revoked"

    refused = await http.get("/api/orders", headers=bearer(secret))
    assert refused.status_code == 401
    assert 'error="invalid_token"' in refused.headers["www-authenticate"]
    with pytest.raises(websockets.InvalidStatus):
        async with open_socket(server, headers=bearer(secret)):
            pass
    again = await http.delete(f"/api/tokens/{created['id']}", headers=alice.auth)
    assert again.status_code == 404 and again.json()["error"]["code"] == "not_found"
    listed = (await http.get("/api/tokens", headers=alice.auth)).json()["items"]
    assert created["id"] not in [t["id"] for t in listed]
    # The user's other token (the fixture's) is untouched.
    assert (await http.get("/api/orders", headers=alice.auth)).status_code == 200


async def test_another_users_token_is_404(http, make_user):
    alice, mallory = make_user(), make_user()
    token = await new_token(http, alice)
    for method in ("GET", "DELETE"):
        response = await http.request(method, f"/api/tokens/{token['id']}",
                                      headers=mallory.auth)
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    theirs = (await http.get("/api/tokens", headers=mallory.auth)).json()["items"]
    assert token["id"] not in [t["id"] for t in theirs]
    assert (await http.get("/api/orders", headers=bearer(token["token"]))).status_code == 200


async def test_staff_cannot_revoke_others_tokens_here_either(http, make_user):
    alice, boss = make_user(), make_user(staff=True)
    token = await new_token(http, alice)
    response = await http.delete(f"/api/tokens/{token['id']}", headers=boss.auth)
    assert response.status_code == 404  # staff use DELETE /api/users/{id}/tokens
    assert (await http.get("/api/orders", headers=bearer(token["token"]))).status_code == 200


async def test_a_token_may_make_and_revoke_tokens_even_itself(http, make_user):
    alice = make_user()
    first = await new_token(http, alice, "first")
    second = (await http.post("/api/tokens", json={"name": "second"},
                              headers=bearer(first["token"]))).json()
    assert (await http.get("/api/orders", headers=bearer(second["token"]))).status_code == 200
    own = await http.delete(f"/api/tokens/{first['id']}", headers=bearer(first["token"]))
    assert own.status_code == 204
    assert (await http.get("/api/tokens", headers=bearer(first["token"]))).status_code == 401


async def test_a_cookie_session_manages_tokens_with_csrf(http, make_user):
    alice = make_user()
    csrf = await login(http, alice)
    refused = await http.post("/api/tokens", json={"name": "no csrf"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "csrf"
    created = await http.post("/api/tokens", json={"name": "browser"},
                              headers={"X-CSRF-Token": csrf})
    assert created.status_code == 201, created.text
    token_id = created.json()["id"]
    assert token_id in [t["id"] for t in (await http.get("/api/tokens")).json()["items"]]
    assert (await http.delete(f"/api/tokens/{token_id}")).status_code == 403
    assert (await http.delete(f"/api/tokens/{token_id}",
                              headers={"X-CSRF-Token": csrf})).status_code == 204


@pytest.mark.parametrize(("body", "field"), [
    ({}, "name"), ({"name": ""}, "name"), ({"name": "   "}, "name"), ({"name": 7}, "name"),
    ({"name": "x" * 101}, "name"), ({"name": "a\nb"}, "name"), ({"name": "\ud800"}, "name"),
    ({"name": "ok", "scope": "all"}, "scope"),
])
async def test_bad_token_requests_are_clear_json_errors(http, make_user, body, field):
    alice = make_user()
    # json.dumps escapes the lone surrogate ("\\ud800"), as a hostile client would send it.
    response = await http.post("/api/tokens", content=json.dumps(body),
                               headers={**alice.auth, "Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert field in response.json()["error"]["fields"]


async def test_malformed_token_requests(http, make_user):
    alice = make_user()
    not_json = await http.post("/api/tokens", content="name=x", headers={
        **alice.auth, "Content-Type": "application/x-www-form-urlencoded"})
    assert not_json.status_code == 415
    broken = await http.post("/api/tokens", content="{", headers={
        **alice.auth, "Content-Type": "application/json"})
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "bad_json"
    for token_id in ("abc", "0", "-1", "99999999999999999999999", "1.5"):
        response = await http.delete(f"/api/tokens/{token_id}", headers=alice.auth)
        assert response.status_code == 404, (token_id, response.text)


# -- the token as a WebSocket subprotocol (third-party pages) -------------------------------


@pytest.fixture
async def widget_user(make_user) -> AsyncIterator[User]:
    yield make_user()


def page_socket(server: ServerProcess, protocols: list[str], origin: str | None):
    return websockets.connect(server.ws_url, subprotocols=protocols,  # type: ignore[arg-type]
                              origin=origin, open_timeout=5)  # type: ignore[arg-type]


async def test_subprotocol_token_from_an_allowed_third_party_page(second_server, widget_user,
                                                                  sql):
    protocols = ["orderstream.v1", f"bearer.{widget_user.token}"]
    async with page_socket(second_server, protocols, THIRD_PARTY) as conn:
        # The answer names orderstream.v1, never the token.
        assert conn.subprotocol == "orderstream.v1"
        assert widget_user.token not in str(conn.response.headers)
        ws = Socket(conn)
        await ws.subscribe_orders()
        order_id = insert_order(sql, widget_user.id)
        assert (await ws.recv_type("order"))["order"]["id"] == order_id


async def test_subprotocol_token_from_the_servers_own_origin(server, widget_user):
    protocols = ["orderstream.v1", f"bearer.{widget_user.token}"]
    async with page_socket(server, protocols, server.base_url) as conn:
        assert conn.subprotocol == "orderstream.v1"
        assert (await Socket(conn).subscribe_orders())["channel"] == "orders"


@pytest.mark.parametrize("case", ["bad origin", "unlisted origin", "no orderstream.v1",
                                  "wrong token"])
async def test_subprotocol_token_refusals(server, second_server, widget_user, case):
    good = ["orderstream.v1", f"bearer.{widget_user.token}"]
    target, protocols, origin = {
        "bad origin": (second_server, good, "https://evil.example"),
        "unlisted origin": (server, good, THIRD_PARTY),  # allowed on second_server only
        "no orderstream.v1": (second_server, [f"bearer.{widget_user.token}"], THIRD_PARTY),
        "wrong token": (second_server, ["orderstream.v1", "bearer.nope"], THIRD_PARTY),
    }[case]
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with page_socket(target, protocols, origin):
            pass
    assert refused.value.response.status_code == 403


async def test_header_token_with_the_subprotocol_offered(server, widget_user):
    """Programs may offer orderstream.v1 too; the server answers with it."""
    async with websockets.connect(server.ws_url, subprotocols=["orderstream.v1"],  # type: ignore[list-item]
                                  additional_headers=widget_user.auth, open_timeout=5) as conn:
        assert conn.subprotocol == "orderstream.v1"
