"""Who may do what: WebSocket handshakes, staff-only subscriptions, login, logout, CSRF,
cookies, security headers, tokens, and staff-only pages and endpoints."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import websockets

from tests.conftest import ServerProcess, User, _csrf_from, insert_order, login, open_socket


async def assert_handshake_refused(server: ServerProcess, headers: dict[str, str]) -> None:
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(server.ws_url, additional_headers=headers,
                                      open_timeout=5):
            pass
    assert refused.value.response.status_code == 403


@contextlib.asynccontextmanager
async def browser_session(server: ServerProcess, user: User
                          ) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """A logged-in cookie session, and its CSRF token."""
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        yield client, await login(client, user)


def cookie_header(client: httpx.AsyncClient) -> str:
    return "; ".join(f"{name}={value}" for name, value in client.cookies.items())


# -- WebSocket handshakes -----------------------------------------------------


async def test_handshake_without_credentials_is_refused(server):
    await assert_handshake_refused(server, {})
    await assert_handshake_refused(server, {"Origin": server.base_url})
    await assert_handshake_refused(server, {"Cookie": "orderstream_session=forged"})


async def test_handshake_with_invalid_bearer_is_refused(server, make_user):
    alice = make_user()
    for value in ("Bearer nope", f"Bearer {alice.token}x", f"Basic {alice.token}", "Bearer",
                  f"bearer  {alice.token[:-1]}"):
        await assert_handshake_refused(server, {"Authorization": value})


async def test_handshake_from_a_foreign_origin_is_refused(server, make_user):
    alice = make_user()
    async with browser_session(server, alice) as (client, _):
        cookie = cookie_header(client)
        for origin in ("https://evil.example", "http://127.0.0.1:1", "null",
                       f"http://127.0.0.1:{server.port}.evil.example",
                       f"ftp://127.0.0.1:{server.port}"):
            await assert_handshake_refused(server, {**alice.auth, "Origin": origin})
            await assert_handshake_refused(server, {"Cookie": cookie, "Origin": origin})


async def test_handshake_with_same_origin_cookie_session_is_accepted(server, make_user, sql):
    alice = make_user()
    async with browser_session(server, alice) as (client, _):
        headers = {"Cookie": cookie_header(client), "Origin": server.base_url,
                   "User-Agent": client.headers["user-agent"]}
        async with open_socket(server, headers=headers) as ws:
            subscribed = await ws.subscribe_orders()
            assert subscribed["owner"] == alice.id
            order_id = insert_order(sql, alice.id, "COOKIE-WS")
            event = await ws.recv_type("order")
            assert event["order"]["id"] == order_id


async def test_normal_user_may_not_watch_others(server, make_user, sql):
    alice, bob = make_user(), make_user()
    async with open_socket(server, alice) as ws:
        for owner in ("*", bob.id):
            await ws.send({"op": "subscribe", "channel": "orders", "owner": owner})
            error = await ws.recv_type("error")
            assert error["code"] == "forbidden", error
        insert_order(sql, bob.id, "BOBS-SECRET")
        await ws.assert_silent()
        # Still open, still only her own (she never subscribed successfully, so nothing at all).
        await ws.send({"op": "ping", "id": "alive"})
        assert (await ws.recv_type("pong"))["id"] == "alive"
        await ws.subscribe_orders()
        insert_order(sql, bob.id, "BOBS-SECRET-2")
        mine = insert_order(sql, alice.id, "MINE")
        event = await ws.recv_type("order")
        assert event["order"]["id"] == mine
        await ws.assert_silent()


# -- login, logout, sessions --------------------------------------------------


@pytest.fixture
def login_server(db_url, tmp_path_factory) -> Iterator[ServerProcess]:
    """A fresh server (fresh login throttle) for failing logins: the throttle also counts
    failures per client address with the same limit, and every test connects from
    127.0.0.1, so failures here would lock every other test out of /login."""
    proc = ServerProcess(db_url, tmp_path_factory.mktemp("login-server"))
    proc.start()
    yield proc
    proc.stop()


async def post_login(client: httpx.AsyncClient, username: str, password: str,
                     next_url: str = "/") -> httpx.Response:
    token = _csrf_from((await client.get("/login")).text)
    return await client.post("/login", data={"username": username, "password": password,
                                             "csrf_token": token, "next": next_url})


async def test_wrong_password_is_401_without_a_session(login_server, make_user):
    alice = make_user()
    async with httpx.AsyncClient(base_url=login_server.base_url, timeout=10) as client:
        for username, password in ((alice.username, alice.password + "x"),
                                   ("no-such-user-at-all", alice.password)):
            response = await post_login(client, username, password)
            assert response.status_code == 401
            assert "text/html" in response.headers["content-type"]
            assert "Wrong username or password" in response.text
            assert (await client.get("/")).status_code == 303
            assert (await client.get("/api/orders")).status_code == 401
        # A wrong CSRF token, or a cross-site post (foreign Origin) without one, is refused
        # before the password is looked at.
        refused = await client.post("/login", data={"username": alice.username,
                                                    "password": alice.password,
                                                    "csrf_token": "forged"})
        assert refused.status_code == 403 and (await client.get("/")).status_code == 303
        refused = await client.post("/login", data={"username": alice.username,
                                                    "password": alice.password},
                                    headers={"Origin": "http://evil.example"})
        assert refused.status_code == 403 and (await client.get("/")).status_code == 303


async def test_programs_may_log_in_without_the_form(server, make_user):
    alice = make_user()
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        response = await client.post("/login", data={"username": alice.username,
                                                     "password": alice.password})
        assert response.status_code == 303
        assert (await client.get("/api/orders")).status_code == 200


async def test_login_is_throttled_after_repeated_failures(login_server, make_user):
    victim = make_user(prefix="throttled")
    async with httpx.AsyncClient(base_url=login_server.base_url, timeout=10) as client:
        for _ in range(10):  # ORDERSTREAM_LOGIN_MAX_FAILURES default
            assert (await post_login(client, victim.username, "wrong")).status_code == 401
        # Now even the right password is refused, and no session is made.
        blocked = await post_login(client, victim.username, victim.password)
        assert blocked.status_code == 429 and "Too many" in blocked.text
        assert (await client.get("/")).status_code == 303


async def test_logout_requires_csrf(server, make_user):
    alice = make_user()
    async with browser_session(server, alice) as (client, csrf):
        refused = await client.post("/logout")
        assert refused.status_code == 403
        refused = await client.post("/logout", data={"csrf_token": "forged"})
        assert refused.status_code == 403
        assert (await client.get("/")).status_code == 200  # still logged in
        done = await client.post("/logout", data={"csrf_token": csrf})
        assert done.status_code == 303 and done.headers["location"] == "/login"
        assert (await client.get("/")).status_code == 303
        assert (await client.get("/api/orders")).status_code == 401


async def test_session_cookie_flags(server, make_user):
    alice = make_user()
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        response = await post_login(client, alice.username, alice.password)
        assert response.status_code == 303
        cookies = [v for k, v in response.headers.multi_items() if k.lower() == "set-cookie"]
        session = [c for c in cookies if c.startswith("orderstream_session=")]
        assert session, cookies
        flags = {part.strip().lower() for part in session[0].split(";")[1:]}
        assert "httponly" in flags and "samesite=lax" in flags and "path=/" in flags
        # Plain http here; Secure is set for https requests (cookie_secure = "auto").
        assert "secure" not in flags


async def test_admin_page_is_for_staff_only(server, make_user):
    alice, staff = make_user(), make_user(staff=True)
    async with browser_session(server, alice) as (client, _):
        assert (await client.get("/admin")).status_code == 404
    async with browser_session(server, staff) as (client, _):
        page = await client.get("/admin")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    async with httpx.AsyncClient(base_url=server.base_url) as anonymous:
        response = await anonymous.get("/admin")
        assert response.status_code == 303
        assert response.headers["location"].startswith("/login")


async def test_dashboard_redirects_to_login_when_logged_out(http):
    response = await http.get("/")
    assert response.status_code == 303
    assert response.headers["location"] in ("/login", "/login?next=/")
    assert (await http.get(response.headers["location"])).status_code == 200


def _browser_target(location: str) -> str:
    """Where a browser would go: it drops tabs and newlines and treats \\ as /."""
    cleaned = re.sub(r"[\t\n\r]", "", location).strip().replace("\\", "/")
    return cleaned


@pytest.mark.parametrize("next_url", [
    "//evil.example/", "https://evil.example/", "http:evil.example", "/\\evil.example",
    "\\\\evil.example", "/\t/evil.example", "javascript:alert(1)", "///evil.example",
    " //evil.example", "/%2F%2Fevil.example",
])
async def test_next_never_leaves_the_site(server, make_user, next_url):
    alice = make_user()
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        form = await client.get("/login", params={"next": next_url})
        assert "evil.example\"" not in form.text.replace("/%2F%2Fevil.example", "")
        response = await post_login(client, alice.username, alice.password, next_url)
        assert response.status_code == 303
        target = _browser_target(response.headers["location"])
        assert target.startswith("/") and not target.startswith("//"), target


async def test_next_keeps_a_local_path(server, make_user):
    alice = make_user()
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        response = await post_login(client, alice.username, alice.password, "/admin?x=1")
        assert response.headers["location"] == "/admin?x=1"


async def test_security_headers(server, make_user, http):
    alice = make_user()
    responses = [await http.get("/login"), await http.get("/"),
                 await http.get("/api/orders", headers=alice.auth),
                 await http.get("/api/orders/abc", headers=alice.auth),
                 await http.get("/api/orders")]
    for response in responses:
        headers = response.headers
        assert headers["x-content-type-options"] == "nosniff"
        csp = {d.split()[0]: d.split()[1:]
               for d in (p.strip() for p in headers["content-security-policy"].split(";")) if d}
        script_src = csp.get("script-src", csp.get("default-src"))
        assert script_src and "'unsafe-inline'" not in script_src
        assert "'unsafe-eval'" not in script_src
        assert csp["frame-ancestors"] == ["'none'"]


# -- tokens ------------------------------------------------------------------


async def test_tokens_are_stored_hashed(make_user, sql):
    alice = make_user()
    rows = sql.execute("SELECT t::text FROM api_tokens t WHERE user_id = %s",
                       (alice.id,)).fetchall()
    assert rows
    for (text,) in rows:
        assert alice.token not in text
        assert alice.token.encode().hex() not in text


async def test_revoked_token_stops_working(server, make_user, http):
    alice, bob, staff = make_user(), make_user(), make_user(staff=True)
    assert (await http.get("/api/orders", headers=alice.auth)).status_code == 200
    # Only staff may revoke; to anyone else the endpoint does not exist.
    not_yours = await http.delete(f"/api/users/{alice.id}/tokens", headers=bob.auth)
    assert not_yours.status_code == 404
    assert (await http.get("/api/orders", headers=alice.auth)).status_code == 200

    revoked = await http.delete(f"/api/users/{alice.id}/tokens", headers=staff.auth)
    assert revoked.status_code == 200 and revoked.json() == {"revoked": 1}
    response = await http.get("/api/orders", headers=alice.auth)
    assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"
    await assert_handshake_refused(server, alice.auth)
    assert (await http.get("/api/orders", headers=bob.auth)).status_code == 200
    missing = await http.delete("/api/users/987654321/tokens", headers=staff.auth)
    assert missing.status_code == 404


async def test_user_endpoints_are_404_for_non_staff(server, make_user, http):
    alice, bob = make_user(), make_user()
    calls = [("GET", "/api/users", None), ("POST", "/api/users",
                                            {"username": "sneaky", "password": "x" * 12}),
             ("PATCH", f"/api/users/{alice.id}", {"is_staff": True}),
             ("PATCH", f"/api/users/{bob.id}", {"password": "y" * 12}),
             ("DELETE", f"/api/users/{bob.id}/tokens", None)]
    for method, path, body in calls:
        response = await http.request(method, path, json=body, headers=alice.auth)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["error"]["code"] == "not_found"
    async with browser_session(server, alice) as (client, csrf):
        for method, path, body in calls:
            response = await client.request(method, path, json=body,
                                            headers={"X-CSRF-Token": csrf})
            assert response.status_code == 404, (method, path, response.text)
    # Nothing changed: alice is not staff, bob's token works, no "sneaky" user.
    assert (await http.get("/api/users", headers=alice.auth)).status_code == 404
    assert (await http.get("/api/orders", headers=bob.auth)).status_code == 200


async def test_staff_manage_users(server, make_user, http):
    staff = make_user(staff=True)
    listed = await http.get("/api/users", headers=staff.auth)
    assert listed.status_code == 200
    assert staff.username in {u["username"] for u in listed.json()["items"]}
    name = f"made_by_staff_{staff.id}"
    created = await http.post("/api/users", headers=staff.auth,
                              json={"username": name, "password": "p" * 12})
    assert created.status_code == 201 and created.json()["is_staff"] is False
    again = await http.post("/api/users", headers=staff.auth,
                            json={"username": name, "password": "p" * 12})
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
    promoted = await http.patch(f"/api/users/{created.json()['id']}", headers=staff.auth,
                                json={"is_staff": True})
    assert promoted.status_code == 200 and promoted.json()["is_staff"] is True
    assert "password_hash" not in promoted.json() and "password" not in promoted.json()


async def test_session_cookie_is_secure_over_https(server):
    # Behind a TLS-terminating proxy on loopback (uvicorn trusts its X-Forwarded-Proto).
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        response = await client.get("/login", headers={"X-Forwarded-Proto": "https"})
    cookies = [v for k, v in response.headers.multi_items() if k.lower() == "set-cookie"]
    session = [c for c in cookies if c.startswith("orderstream_session=")]
    assert session, cookies
    assert "secure" in {part.strip().lower() for part in session[0].split(";")[1:]}


async def test_a_password_that_is_not_unicode_is_a_422(server, make_user):
    boss, victim = make_user(staff=True), make_user()
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        for method, url, body in (
            ("PATCH", f"/api/users/{victim.id}", {"password": "\ud800abcdefgh"}),
            ("POST", "/api/users", {"username": "surrogate", "password": "\ud800abcdefgh"}),
        ):
            response = await client.request(  # json.dumps escapes the surrogate as \ud800
                method, url, content=json.dumps(body),
                headers={**boss.auth, "Content-Type": "application/json"})
            assert response.status_code == 422
            assert response.json()["error"]["fields"]["password"] == "must be valid Unicode text"
