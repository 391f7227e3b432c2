"""The database goes away (closed to connections, or its port refusing them): every path
answers a JSON 503 with Retry-After, never a 500 or a dropped connection; once it is back,
/healthz is 200 and events flow within 5 s."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import psycopg
import pytest
import websockets
from psycopg.conninfo import conninfo_to_dict

from tests.conftest import ServerProcess, User, insert_order, login, open_socket
from tests.support.database import allow_connections, new_user, own_database
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.slow
T = TypeVar("T")


@pytest.fixture(scope="module")
def outage_db(server_url: str) -> Iterator[str]:
    with own_database(server_url, "outage") as url:
        yield url


@pytest.fixture(scope="module")
def outage_server(outage_db: str, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[ServerProcess]:
    proc = ServerProcess(outage_db, tmp_path_factory.mktemp("outage"))
    proc.start()
    yield proc
    proc.stop()


def set_open(server_url: str, db_url: str, allow: bool) -> None:
    """Open or close the database to connections; closing also ends every backend on it,
    and waits until they are gone."""
    allow_connections(server_url, db_url, allow)
    if allow:
        return
    name = conninfo_to_dict(db_url)["dbname"]
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                     " WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
        deadline = time.monotonic() + 10
        while conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                           (name,)).fetchone() != (0,):
            assert time.monotonic() < deadline, "backends survived pg_terminate_backend"
            time.sleep(0.02)


def assert_unavailable(response: httpx.Response, what: str) -> None:
    assert response.status_code == 503, f"{what}: {response.status_code} {response.text}"
    assert response.headers.get("retry-after", "").isdigit(), f"{what}: {response.headers}"
    error = response.json()["error"]
    assert error["code"] in ("unavailable", "busy"), f"{what}: {error}"
    assert error["message"], what


async def timed(request: Callable[[], Awaitable[T]]) -> tuple[T, float]:
    started = time.monotonic()
    answer = await request()
    return answer, time.monotonic() - started


async def handshake_status(server: ServerProcess, user: User) -> tuple[int, bytes]:
    try:
        async with websockets.connect(server.ws_url, additional_headers=user.auth,
                                      open_timeout=10):
            return 101, b""
    except websockets.InvalidStatus as exc:
        return exc.response.status_code, exc.response.body or b""


async def test_database_closed_to_connections(
        server_url: str, outage_db: str, outage_server: ServerProcess) -> None:
    """ALLOW_CONNECTIONS false: the server answers every new connection with an error."""
    await exercise_outage(outage_server, outage_db,
                          close=lambda: set_open(server_url, outage_db, False),
                          reopen=lambda: set_open(server_url, outage_db, True))


@contextlib.contextmanager
def behind_proxy(db_url: str, tmp_path: Path, env: dict[str, str] | None = None
                 ) -> Iterator[tuple[ServerProcess, TcpProxy]]:
    """A server whose database connections all go through a TcpProxy."""
    parts = urlsplit(db_url)
    # The embedded server's URL names its socket directory and port in the query.
    query = dict(parse_qsl(parts.query))
    host = query.pop("host", None) or parts.hostname or "127.0.0.1"
    port = int(query.pop("port", None) or parts.port or 5432)
    unix_socket = f"{host}/.s.PGSQL.{port}" if host.startswith("/") else None
    proxy = TcpProxy(host, port, unix_socket)
    proxy.up()
    user = f"{parts.username}@" if parts.username else ""
    proxied = urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{proxy.port}",
                                        query=urlencode(query)))
    server = ServerProcess(proxied, tmp_path, extra_env=env)
    try:
        server.start()
        yield server, proxy
    finally:
        server.stop()
        proxy.close()


async def test_database_port_refusing(outage_db: str, tmp_path: Path) -> None:
    """The port refuses connections and every open one is reset (a proxy stops)."""
    with behind_proxy(outage_db, tmp_path) as (server, proxy):
        await exercise_outage(server, outage_db, close=proxy.down, reopen=proxy.up)


async def test_database_stops_answering(outage_db: str, tmp_path: Path) -> None:
    """A network that drops every packet: connections open, nothing comes back. Queries
    give up 2 s past statement_timeout (1 s here), acquires after 2 s, connects after 5 s."""
    env = {"ORDERSTREAM_API_STATEMENT_TIMEOUT_MS": "1000"}
    with behind_proxy(outage_db, tmp_path, env) as (server, proxy):
        await exercise_outage(server, outage_db, close=proxy.stall, reopen=proxy.up)


async def exercise_outage(server: ServerProcess, db_url: str, close: Callable[[], None],
                          reopen: Callable[[], None]) -> None:
    """With the database closed, every path answers 503 (twice: the first round meets the
    pool's dead connections, the second opens new ones); reopened, /healthz is 200 and a
    psql write reaches a socket opened before the outage, within 5 s."""
    user = new_user(db_url, prefix="outage")
    base = server.base_url
    order = {"instrument": "ACME", "quantity": "1", "price": "1"}
    async with (httpx.AsyncClient(base_url=base, timeout=15) as token_client,
                httpx.AsyncClient(base_url=base, timeout=15) as browser,
                httpx.AsyncClient(base_url=base, timeout=15) as anonymous,
                open_socket(server, user) as ws):
        csrf = await login(browser, user)
        await ws.subscribe_orders()
        probes = {
            "token GET": lambda: token_client.get("/api/orders", headers=user.auth),
            "token POST": lambda: token_client.post("/api/orders", headers=user.auth,
                                                    json=order),
            "session GET": lambda: browser.get("/api/orders"),
            "session POST": lambda: browser.post("/api/orders", json=order,
                                                 headers={"X-CSRF-Token": csrf}),
            "dashboard": lambda: browser.get("/"),
            "login POST": lambda: anonymous.post(
                "/login", data={"username": user.username, "password": user.password}),
            "healthz": lambda: anonymous.get("/healthz"),
        }
        close()
        try:
            for _ in range(2):
                answers = await asyncio.gather(*(timed(request) for request in probes.values()),
                                               timed(lambda: handshake_status(server, user)))
                print(", ".join(f"{what} {answer.status_code} {answer.json()['error']['code']}"
                                f" {took:.1f}s" for what, (answer, took)
                                in zip(probes, answers, strict=False)),
                      f"/ws {answers[-1][0][0]} {answers[-1][1]:.1f}s")
                for what, (answer, took) in zip(probes, answers, strict=False):
                    assert_unavailable(answer, what)
                    assert took < 5, f"{what} took {took:.1f} s"
                (status, body), took = answers[-1]
                assert status == 503, (status, body)
                assert json.loads(body)["error"]["code"] in ("unavailable", "busy"), body
                assert took < 5, f"the handshake took {took:.1f} s"
        finally:
            reopen()
        reopened = time.monotonic()
        async with httpx.AsyncClient(base_url=base, timeout=2) as client:
            while (await client.get("/healthz")).status_code != 200:
                assert time.monotonic() - reopened < 5, "/healthz not 200 within 5 s"
                await asyncio.sleep(0.05)
        healthy_in = time.monotonic() - reopened
        with psycopg.connect(db_url, autocommit=True) as sql:
            order_id = insert_order(sql, user.id, "AFTER-OUTAGE")
        event = await ws.recv_type("order", timeout=5 - healthy_in)
        assert event["order"]["id"] == order_id
        delivered_in = time.monotonic() - reopened
        assert delivered_in < 5
        assert (await token_client.get("/api/orders", headers=user.auth)).status_code == 200
    print(f"healthy {healthy_in:.2f} s, event delivered {delivered_in:.2f} s after reopening")
    assert "Traceback" not in server.log()
