"""Rights change while a socket is open: the change applies in stream order, so nothing
committed after it reaches a session that lost the right to read it."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import websockets

from tests.conftest import insert_order, login, open_socket


async def expect_close(ws, code: int) -> str:
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:  # frames queued before the close may still arrive
            await asyncio.wait_for(ws.conn.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == code
    return closed.value.rcvd.reason


async def test_demoted_staff_stops_seeing_other_owners_at_once(server, make_user, sql):
    boss, alice = make_user(staff=True), make_user()
    async with open_socket(server, boss) as ws:
        await ws.subscribe_orders(owner="*")
        insert_order(sql, alice.id, "BEFORE")
        assert (await ws.recv_type("order"))["order"]["instrument"] == "BEFORE"
        # The demotion and the next write commit back to back: the event must not leak.
        sql.execute("UPDATE users SET is_staff = false WHERE id = %s", (boss.id,))
        insert_order(sql, alice.id, "AFTER")
        error = await ws.recv_type("error")
        assert error["code"] == "forbidden"
        await ws.assert_silent(0.5)
        # Still a working socket for the user's own orders.
        await ws.send({"op": "subscribe", "channel": "orders", "owner": "*"})
        assert (await ws.recv_type("error"))["code"] == "forbidden"
        await ws.subscribe_orders()
        own = insert_order(sql, boss.id, "OWN")
        assert (await ws.recv_type("order"))["order"]["id"] == own


async def test_revoked_token_closes_its_sockets(server, make_user, sql):
    boss, alice = make_user(staff=True), make_user()
    async with open_socket(server, alice) as ws:
        await ws.subscribe_orders()
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            response = await client.delete(f"/api/users/{alice.id}/tokens", headers=boss.auth)
            assert response.json() == {"revoked": 1}
        insert_order(sql, alice.id, "AFTER-REVOKE")
        assert await expect_close(ws, 1008) == "token revoked"


async def test_deleted_user_loses_the_socket(server, make_user, sql):
    carol = make_user()
    async with open_socket(server, carol) as ws:
        await ws.subscribe_orders()
        sql.execute("DELETE FROM api_tokens WHERE user_id = %s", (carol.id,))
        sql.execute("DELETE FROM users WHERE id = %s", (carol.id,))
        await expect_close(ws, 1008)


async def test_password_change_ends_cookie_sessions(server, make_user, sql):
    dave = make_user()
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        await login(client, dave)
        cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
    headers = {"Cookie": cookie, "Origin": server.base_url}
    async with open_socket(server, headers=headers) as ws, open_socket(server, dave) as token_ws:
        await ws.subscribe_orders()
        await token_ws.subscribe_orders()
        sql.execute("UPDATE users SET password_hash = 'x' WHERE id = %s", (dave.id,))
        await expect_close(ws, 1008)
        order_id = insert_order(sql, dave.id)
        assert (await token_ws.recv_type("order"))["order"]["id"] == order_id


async def test_logout_ends_the_session_on_the_server(server, make_user):
    erin = make_user()
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        csrf = await login(client, erin)
        cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
        headers = {"Cookie": cookie, "Origin": server.base_url}
        async with open_socket(server, headers=headers) as ws:
            await ws.subscribe_orders()
            assert (await client.post("/logout", data={"csrf_token": csrf})).status_code == 303
            assert await expect_close(ws, 1008) == "logged out"
    # The cookie copied before logout is worth nothing now.
    async with httpx.AsyncClient(base_url=server.base_url, headers={"Cookie": cookie}) as thief:
        assert (await thief.get("/api/orders")).status_code == 401
        assert (await thief.get("/")).status_code == 303


async def test_password_reset_ends_browser_sessions(server, make_user):
    frank, boss = make_user(), make_user(staff=True)
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        await login(client, frank)
        assert (await client.get("/api/orders")).status_code == 200
        async with httpx.AsyncClient(base_url=server.base_url) as admin:
            reset = await admin.patch(f"/api/users/{frank.id}", headers=boss.auth,
                                      json={"password": "a-brand-new-password"})
            assert reset.status_code == 200
        assert (await client.get("/api/orders")).status_code == 401


async def test_a_forged_auth_notification_grants_nothing(server, make_user, sql):
    """Any role that can connect may NOTIFY; the payload is only a hint to re-read."""
    alice, bob = make_user(), make_user()
    async with open_socket(server, alice) as ws:
        sql.execute("SELECT pg_notify('auth', %s)",
                    (f'{{"user_id": {alice.id}, "is_staff": true}}',))
        await ws.send({"op": "ping", "id": 1})
        await ws.recv_type("pong")
        await ws.send({"op": "subscribe", "channel": "orders", "owner": "*"})
        assert (await ws.recv_type("error"))["code"] == "forbidden"
        await ws.subscribe_orders()
        insert_order(sql, bob.id, "NOT-FOR-ALICE")
        await ws.assert_silent()


async def test_demotion_just_before_a_resume_lets_no_replayed_event_through(
        server, make_user, sql):
    """A staff socket is demoted by SQL and at once resumes "*" from an old cursor: either
    the subscription is refused (the stream applied the demotion first) or the resume's
    log read, which re-reads rights in its own snapshot, takes "*" away before any of its
    changes go out. Bob's order never reaches the demoted session."""
    boss, bob = make_user(staff=True), make_user()
    async with open_socket(server, boss) as ws:
        cursor = (await ws.subscribe_orders(owner="*"))["cursor"]
    insert_order(sql, bob.id, "MISSED")
    async with open_socket(server, boss) as ws:  # authenticated as staff
        sql.execute("UPDATE users SET is_staff = false WHERE id = %s", (boss.id,))
        await ws.send({"op": "subscribe", "channel": "orders", "owner": "*", "after": cursor})
        while True:
            frame = await ws.recv()
            assert frame["type"] != "order", frame
            if frame["type"] == "error":
                break
        assert frame["code"] == "forbidden"
        await ws.assert_silent(0.5)
