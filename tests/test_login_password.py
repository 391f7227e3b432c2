"""/login takes a password as given: one past the API's longest is wrong, never cut to fit."""

from __future__ import annotations

import secrets

import httpx

from cli.users import create_user
from tests.conftest import FAST_PASSWORDS, _csrf_from
from web.users_api import MAX_PASSWORD


async def _login(client: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    token = _csrf_from((await client.get("/login")).text)
    return await client.post("/login", data={"username": username, "password": password,
                                             "csrf_token": token, "next": "/"})


async def test_a_password_past_the_longest_is_wrong_not_truncated(db_url, server):
    username = f"longest_{secrets.token_hex(3)}"
    longest = secrets.token_urlsafe(MAX_PASSWORD)[:MAX_PASSWORD]
    create_user(db_url, FAST_PASSWORDS, username, longest, False)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        # Its first MAX_PASSWORD characters are the password: cut there, it would log in.
        refused = await _login(client, username, longest + "x")
        assert refused.status_code == 401
        assert "Wrong username or password." in refused.text
        assert refused.headers["www-authenticate"] == 'Bearer realm="orderstream"'
        assert (await client.get("/")).status_code == 303
        assert (await _login(client, username, longest)).status_code == 303
        assert (await client.get("/")).status_code == 200
