"""The LISTEN connection dies; the server notices, reconnects, and replays what it missed
from the change log, so subscribed clients lose nothing and need no resync."""

from __future__ import annotations

import asyncio
import time

import httpx

from tests.conftest import ServerProcess, insert_order, metrics, open_socket, terminate_listeners


async def metric(server: ServerProcess, name: str) -> float:
    return (await metrics(server))[name]


async def wait_metric(server: ServerProcess, name: str, at_least: float,
                      timeout: float = 10.0) -> float:
    """Until the server's counter `name` reaches `at_least`; fails if it does not within
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while (value := await metric(server, name)) < at_least:
        assert time.monotonic() < deadline, f"{name} still {value:g} after {timeout:g} s"
        await asyncio.sleep(0.05)
    return value


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
        reconnects = await metric(own_server, "orderstream_listener_reconnects_total")
        assert terminate_listeners(sql) >= 1
        # Recovered: the count goes up once the new connection listens.
        await wait_metric(own_server, "orderstream_listener_reconnects_total", reconnects + 1)
        response = await client.get("/healthz")
        assert response.status_code == 200 and response.json()["listener"] is True


async def test_listener_overflow_mid_transaction_loses_nothing(db_url, tmp_path, make_user,
                                                               sql):
    """Transactions of 600 single-row statements (one notification each) overflow a tiny
    listener queue part-way through: the pump reads the rest of that transaction (and what
    followed) from the log. The queue only fills while the pump has something in hand (when
    it is idle, a change is published as it arrives), so a bulk statement goes first: the
    pump reads it from the log while the 600 notifications queue behind it."""
    proc = ServerProcess(db_url, tmp_path, extra_env={"ORDERSTREAM_LISTENER_QUEUE_SIZE": "50"})
    proc.start()
    try:
        alice = make_user()
        async with open_socket(proc, alice) as ws:
            await ws.subscribe_orders()
            with sql.transaction():
                sql.execute("INSERT INTO orders (owner_id, instrument, quantity, price)"
                            " SELECT %s, 'HEAD', 1, 1 FROM generate_series(1, 150)", (alice.id,))
                ids = [insert_order(sql, alice.id, "BULK", price="1") for _ in range(600)]
            for price in ("2", "3"):
                with sql.transaction(), sql.cursor() as cur:
                    cur.executemany("UPDATE orders SET price = %s WHERE id = %s",
                                    [(price, order_id) for order_id in ids])
            seen: dict[int, list[tuple[str, str]]] = {}
            for _ in range(150 + 1800):
                event = await ws.recv_type("order", timeout=15)
                seen.setdefault(event["order"]["id"], []).append(
                    (event["op"], event["order"]["price"]))
            head = [order_id for order_id, changes in seen.items() if order_id not in ids]
            assert len(head) == 150 and all(seen.pop(i) == [("insert", "1")] for i in head)
            assert len(seen) == 600
            assert all(p == [("insert", "1"), ("update", "2"), ("update", "3")]
                       for p in seen.values())
            await ws.assert_silent()
        counters = await metrics(proc)
        assert counters["orderstream_listener_reconnects_total"] == 0
        # The queue really overflowed, and the gap was filled from the log.
        assert counters["orderstream_listener_dropped_total"] > 0
        assert counters["orderstream_listener_replays_total"] >= 1
    finally:
        proc.stop()
