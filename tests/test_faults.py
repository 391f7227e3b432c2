"""Faults against a real PostgreSQL: the database restarts or goes away for a while, a
client dies mid-frame. The server recovers and afterwards every event arrives."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time

import httpx
import psycopg
import pytest

from cli.users import create_token, create_user
from tests.conftest import FAST_PASSWORDS, ServerProcess, User, insert_order, open_socket
from tests.support.database import own_postgres as private_postgres

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def own_postgres():
    """A PostgreSQL of this module's own, so restarting it disturbs no other test."""
    with private_postgres("faults") as server_and_url:
        yield server_and_url


@pytest.fixture(scope="module")
def fault_server(own_postgres, tmp_path_factory):
    _, url = own_postgres
    proc = ServerProcess(url, tmp_path_factory.mktemp("faults"))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def fault_user(own_postgres):
    _, url = own_postgres
    name = f"fault{os.getpid()}"
    password = "fault-password"
    user_id = create_user(url, FAST_PASSWORDS, name, password, False)
    return User(user_id, name, password, create_token(url, name), False)


async def wait_health(server: ServerProcess, status: int, timeout: float = 20) -> float:
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=server.base_url, timeout=2) as client:
        while time.monotonic() - started < timeout:
            try:
                if (await client.get("/healthz")).status_code == status:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.02)
    raise AssertionError(f"/healthz never answered {status}")


def write(url: str, owner_id: int, instrument: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        return insert_order(conn, owner_id, instrument)


async def test_database_restart_loses_nothing(own_postgres, fault_server, fault_user):
    postgres, url = own_postgres
    async with open_socket(fault_server, fault_user) as ws:
        await ws.subscribe_orders()
        first = write(url, fault_user.id, "BEFORE-RESTART")
        assert (await ws.recv_type("order"))["order"]["id"] == first
        await asyncio.to_thread(postgres.restart)
        # Written the moment the database is back, likely before the listener is.
        during = [write(url, fault_user.id, f"RIGHT-AFTER{i}") for i in range(3)]
        got = [(await ws.recv_type("order", timeout=15))["order"]["id"] for _ in during]
        assert got == during
        await wait_health(fault_server, 200)
        later = write(url, fault_user.id, "LATER")
        assert (await ws.recv_type("order"))["order"]["id"] == later
        await ws.assert_silent()


async def test_outage_is_reported_and_survived(own_postgres, fault_server, fault_user):
    postgres, url = own_postgres
    async with open_socket(fault_server, fault_user) as ws:
        await ws.subscribe_orders()
        await asyncio.to_thread(postgres.stop)
        try:
            detected = await wait_health(fault_server, 503)
            assert detected < 3  # termination callback or the 1 s health query
        finally:
            await asyncio.to_thread(postgres.start)
        await wait_health(fault_server, 200)
        after = write(url, fault_user.id, "AFTER-OUTAGE")
        event = await ws.recv_type("order", timeout=10)
        assert event["order"]["id"] == after


async def test_client_killed_mid_frame(fault_server, fault_user, own_postgres):
    _, url = own_postgres
    # A raw WebSocket handshake, then half a frame, then the connection dies.
    raw = socket.create_connection(("127.0.0.1", fault_server.port))
    key = base64.b64encode(os.urandom(16)).decode()
    raw.sendall(
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{fault_server.port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {fault_user.token}\r\n\r\n".encode())
    assert b" 101 " in raw.recv(4096).split(b"\r\n")[0]
    raw.sendall(bytes([0x81, 0xFE, 0x10]))  # text frame, 16-bit length, and no more
    raw.close()
    async with open_socket(fault_server, fault_user) as ws:
        await ws.subscribe_orders()
        order_id = write(url, fault_user.id, "AFTER-KILL")
        assert (await ws.recv_type("order"))["order"]["id"] == order_id
    assert "Traceback" not in fault_server.log()
