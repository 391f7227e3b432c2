"""While the listener cannot read the change log after a gap (a revoked grant, a broken
schema), it hears events but delivers none: /healthz answers 503 until the read succeeds,
and then the stream carries on with nothing lost. On a database of this module's own: the
log is renamed away under a running server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import psycopg
import pytest

from tests.conftest import ServerProcess, insert_order, open_socket
from tests.support.database import new_user, own_database


@pytest.fixture(scope="module")
def url(server_url: str) -> Iterator[str]:
    with own_database(server_url, "catch_up_health") as url:
        yield url


@pytest.fixture(scope="module")
def own_server(url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(url, tmp_path_factory.mktemp("catch_up_health"))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def sql(url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(url, autocommit=True) as conn:
        yield conn


async def health_until(http: httpx.AsyncClient, status: int, says: str = "",
                       timeout: float = 15.0) -> httpx.Response:
    """Until /healthz answers `status` with `says` in its body (the reconnect itself is a
    503 of its own first)."""
    deadline = time.monotonic() + timeout
    while True:
        response = await http.get("/healthz")
        if response.status_code == status and says in response.text:
            return response
        assert time.monotonic() < deadline, (response.status_code, response.text)
        await asyncio.sleep(0.05)


async def test_healthz_is_503_while_the_change_log_cannot_be_read(
        own_server: ServerProcess, sql: psycopg.Connection, url: str) -> None:
    user = new_user(url)
    async with httpx.AsyncClient(base_url=own_server.base_url, timeout=10) as http, \
            open_socket(own_server, user) as ws:
        await ws.subscribe_orders()
        assert (await http.get("/healthz")).status_code == 200
        before = insert_order(sql, user.id, "BEFORE")
        assert (await ws.recv_type("order"))["order"]["id"] == before

        sql.execute("ALTER TABLE order_changes RENAME TO order_changes_away")
        try:
            # A gap: the listener reconnects, LISTENs again, and must read the log.
            sql.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE application_name = 'orderstream-listener'"
                        " AND datname = current_database()")
            refused = await health_until(http, 503, "cannot read the change log")
            body = refused.json()
            assert body["status"] == "unhealthy" and body["listener"] is False, body
            assert body["database"] is True, body
            assert body["error"]["code"] == "unavailable", body
            assert "cannot read the change log" in body["error"]["message"], body
            assert "order_changes" not in refused.text  # the details go to the log only
            assert refused.headers.get("retry-after")
        finally:
            sql.execute("ALTER TABLE order_changes_away RENAME TO order_changes")

        healthy = await health_until(http, 200)
        assert healthy.json() == {"status": "ok", "database": True, "listener": True}
        after = insert_order(sql, user.id, "AFTER")
        got = await ws.recv_type("order", timeout=10)
        assert got["order"]["id"] == after
