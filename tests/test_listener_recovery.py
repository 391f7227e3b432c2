"""The LISTEN connection dies; the server notices, reconnects, and replays what it missed
from the change log, so subscribed clients lose nothing and need no resync."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.conftest import ServerProcess, insert_order, open_socket


@pytest.fixture
def own_server(db_url, tmp_path):
    proc = ServerProcess(db_url, tmp_path, extra_env={"ORDERSTREAM_LOG_LEVEL": "info"})
    proc.start()
    yield proc
    proc.stop()


def terminate_listeners(sql) -> int:
    rows = sql.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE application_name = 'orderstream-listener' AND datname = current_database()"
    ).fetchall()
    return len(rows)


async def metric(server: ServerProcess, name: str) -> float:
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        text = (await client.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


async def test_terminated_listener_recovers_without_losing_events(own_server, make_user, sql):
    alice = make_user()
    async with open_socket(own_server, alice) as ws:
        await ws.subscribe_orders()
        before = insert_order(sql, alice.id, "BEFORE")
        assert (await ws.recv_type("order"))["order"]["id"] == before

        assert terminate_listeners(sql) >= 1
        killed_at = time.monotonic()
        # Written while the listener is (probably) down: nobody hears their NOTIFY.
        during = [insert_order(sql, alice.id, f"DURING{i}") for i in range(5)]
        received = [await ws.recv_type("order", timeout=10) for _ in during]
        recovered_in = time.monotonic() - killed_at
        assert [e["order"]["id"] for e in received] == during
        await ws.assert_silent()  # no resync, no repeats

        after = insert_order(sql, alice.id, "AFTER")
        assert (await ws.recv_type("order"))["order"]["id"] == after
    assert await metric(own_server, "orderstream_listener_reconnects_total") >= 1
    assert recovered_in < 5


async def test_healthz_reports_the_listener(own_server, sql):
    async with httpx.AsyncClient(base_url=own_server.base_url) as client:
        assert (await client.get("/healthz")).json() == {
            "status": "ok", "database": True, "listener": True}
        terminate_listeners(sql)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            # Recovered (and listening again) after a reconnect.
            if await metric(own_server, "orderstream_listener_reconnects_total") >= 1:
                break
            await asyncio.sleep(0.05)
        response = await client.get("/healthz")
        assert response.status_code == 200 and response.json()["listener"] is True
