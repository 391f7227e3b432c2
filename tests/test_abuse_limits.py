"""Abuse is bounded: a login flood checks at most the limit against the hash, hashing runs a
few at a time (memory), bodies stop at 64 KiB, and a user's open sockets are capped."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator

import httpx
import psycopg
import pytest
import websockets

from tests.conftest import ServerProcess, User, open_socket
from tests.support.rss import RssSampler
from web.passwords import Passwords

MAX_BODY = 64 * 1024
SOCKET_CAP = 3


@pytest.fixture(scope="module")
def abuse_server(db_url: str, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[ServerProcess]:
    """A server of this module's own: its login throttle and memory are the tests'. Password
    hashing keeps settings.toml's real cost (64 MiB per hash)."""
    proc = ServerProcess(db_url, tmp_path_factory.mktemp("abuse"),
                         extra_env={"ORDERSTREAM_MAX_SOCKETS_PER_USER": str(SOCKET_CAP)})
    proc.start()
    yield proc
    proc.stop()


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, str]:
    assert response.status_code == status, (response.status_code, response.text)
    error = response.json()["error"]
    assert error["code"] == code and error["message"], error
    return error


# -- login flood --------------------------------------------------------------


async def test_concurrent_guesses_reach_the_hash_at_most_the_limit(abuse_server, make_user):
    bob = make_user(prefix="flooded")
    async with httpx.AsyncClient(base_url=abuse_server.base_url, timeout=60) as client:
        async def guess(i: int) -> httpx.Response:
            return await client.post("/login", data={"username": bob.username,
                                                      "password": f"wrong-{i}"})

        answers = await asyncio.gather(*(guess(i) for i in range(40)))
        statuses = Counter(r.status_code for r in answers)
        print(f"40 concurrent wrong passwords: {statuses[401]} checked (401),"
              f" {statuses[429]} refused (429)")
        assert statuses == {401: 10, 429: 30}, statuses
        for refused in (r for r in answers if r.status_code == 429):
            assert_error(refused, 429, "too_many_requests")
            assert int(refused.headers["retry-after"]) >= 1
        # The right password is refused too while the window lasts, and makes no session.
        right = await client.post("/login", data={"username": bob.username,
                                                  "password": bob.password})
        assert right.status_code == 429
        assert 250 < int(right.headers["retry-after"]) <= 300
        # A browser gets the login page again, with the same status and Retry-After.
        page = await client.post("/login", headers={"Accept": "text/html"},
                                 data={"username": bob.username, "password": bob.password})
        assert page.status_code == 429 and "Too many failed logins" in page.text
        assert page.headers["retry-after"].isdigit()


async def test_forty_concurrent_logins_stay_within_256_mb(abuse_server, make_user, db_url):
    password = "the-real-cost-password"
    real_cost = Passwords()  # settings.toml's cost, as the server uses: 64 MiB per hash
    users = [make_user(prefix="crowd") for _ in range(40)]
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE users SET password_hash = %s WHERE id = ANY(%s)",
                     (real_cost.hash(password), [u.id for u in users]))
    assert abuse_server.process is not None
    sampler = RssSampler(abuse_server.process.pid, interval=0.02)
    try:
        async def log_in(user: User) -> int:
            async with httpx.AsyncClient(base_url=abuse_server.base_url, timeout=120) as client:
                response = await client.post("/login", data={"username": user.username,
                                                             "password": password})
                return response.status_code

        statuses = await asyncio.gather(*(log_in(u) for u in users))
    finally:
        await sampler.stop()
    print(f"40 concurrent logins at 64 MiB per hash: {sampler.summary()}")
    assert statuses == [303] * 40
    assert sampler.growth_mb < 256, sampler.summary()


# -- bodies -------------------------------------------------------------------


async def raw_http(port: int, head: str, body_parts: list[bytes]) -> tuple[int, bytes]:
    """Send a request head and only `body_parts` (maybe not the whole body), then read the
    answer: proves the server answered without waiting for the rest."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.replace("\n", "\r\n").encode() + b"\r\n")
        for part in body_parts:
            writer.write(part)
            await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
        headers = {}
        while (line := await asyncio.wait_for(reader.readline(), 10)) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
        return int(status_line.split()[1]), body
    finally:
        writer.close()


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def test_an_8_mib_datatables_form_is_refused(abuse_server, make_user):
    alice = make_user()
    form = {"draw": "1", "start": "0", "length": "10", "search[value]": "x" * (8 << 20)}
    async with httpx.AsyncClient(base_url=abuse_server.base_url, timeout=60) as client:
        response = await client.post("/api/orders", data=form, headers=alice.auth)
        assert_error(response, 413, "too_large")
        # The connection stays usable.
        assert (await client.get("/api/orders", headers=alice.auth)).status_code == 200


@pytest.mark.parametrize(("path", "content_type"), [
    ("/api/orders", "application/json"),
    ("/api/orders", "application/x-www-form-urlencoded"),
    ("/login", "application/x-www-form-urlencoded"),
    ("/logout", "application/x-www-form-urlencoded"),
    ("/api/users", "application/json"),
    ("/api/users/1", "application/json"),
    ("/api/tokens", "application/json"),
    ("/api/orders/1", "application/json"),
])
async def test_a_chunked_body_stops_at_64_kib(abuse_server, make_user, path, content_type):
    staff = make_user(staff=True)
    method = "PATCH" if path.count("/") == 3 else "POST"
    head = (f"{method} {path} HTTP/1.1\nHost: 127.0.0.1:{abuse_server.port}\n"
            f"Authorization: Bearer {staff.token}\nContent-Type: {content_type}\n"
            "Transfer-Encoding: chunked\n")
    # 80 KiB sent, no last chunk: the server must answer without the end of the body.
    status, body = await raw_http(abuse_server.port, head, [chunk(b"a" * 8192)] * 10)
    assert status == 413, (status, body)
    assert json.loads(body)["error"]["code"] == "too_large"


async def test_a_declared_big_body_is_refused_before_it_is_sent(abuse_server):
    for path in ("/login", "/api/orders"):
        head = (f"POST {path} HTTP/1.1\nHost: 127.0.0.1:{abuse_server.port}\n"
                "Content-Type: application/x-www-form-urlencoded\n"
                f"Content-Length: {8 << 20}\n")
        # Only 1 KiB of the 8 MiB announced: answered at once, before any of it is read.
        status, body = await raw_http(abuse_server.port, head, [b"username=" + b"a" * 1024])
        assert status == 413, (path, status, body)
        assert json.loads(body)["error"]["code"] == "too_large"


async def test_bodies_up_to_the_cap_are_read(abuse_server, make_user):
    alice = make_user()
    note = "n" * (MAX_BODY - 200)  # under the cap, but over the note's own 16 KiB limit
    async with httpx.AsyncClient(base_url=abuse_server.base_url, timeout=60) as client:
        response = await client.post("/api/orders", headers=alice.auth, json={
            "instrument": "ACME", "quantity": "1", "price": "1", "note": note})
        error = assert_error(response, 422, "invalid")
        assert "note" in error["fields"]  # type: ignore[operator]


# -- sockets ------------------------------------------------------------------


async def close_code(server: ServerProcess, user: User) -> tuple[int, str]:
    async with websockets.connect(server.ws_url, additional_headers=user.auth,
                                  open_timeout=5) as conn:
        try:
            await asyncio.wait_for(conn.recv(), 5)
        except websockets.ConnectionClosed as exc:
            assert exc.rcvd is not None
            return exc.rcvd.code, exc.rcvd.reason
    raise AssertionError("the socket stayed open")


async def test_open_sockets_per_user_are_capped(abuse_server, make_user):
    alice, bob = make_user(), make_user()
    async with (open_socket(abuse_server, alice) as first, open_socket(abuse_server, alice),
                open_socket(abuse_server, alice)):
        await first.subscribe_orders()
        code, reason = await close_code(abuse_server, alice)
        assert code == 4429 and str(SOCKET_CAP) in reason, (code, reason)
        # Another user is not affected, and the open sockets still work.
        async with open_socket(abuse_server, bob) as other:
            await other.subscribe_orders()
        await first.send({"op": "ping", "id": 1})
        assert (await first.recv_type("pong"))["id"] == 1
    # Closed ones free their place (once the server has seen them close).
    deadline = asyncio.get_running_loop().time() + 5
    while True:
        async with open_socket(abuse_server, alice) as again:
            await again.send({"op": "subscribe", "channel": "orders"})
            try:
                assert (await again.recv())["type"] == "subscribed"
                break
            except websockets.ConnectionClosed as exc:
                assert exc.rcvd is not None and exc.rcvd.code == 4429
                assert asyncio.get_running_loop().time() < deadline

