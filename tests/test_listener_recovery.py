"""The LISTEN connection dies; the server notices, reconnects, and replays what it missed
from the change log, so subscribed clients lose nothing and need no resync."""

from __future__ import annotations

import asyncio
import time

import httpx

from db.rights import Identities
from tests.conftest import ServerProcess, insert_order, metrics, open_socket


def terminate_listeners(sql) -> int:
    rows = sql.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE application_name = 'orderstream-listener' AND datname = current_database()"
    ).fetchall()
    return len(rows)


async def metric(server: ServerProcess, name: str) -> float:
    return (await metrics(server))[name]


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


class RecordingSink:
    """A plain consumer of what the listener publishes (the hub's interface)."""

    def __init__(self) -> None:
        self.cursor = ""
        self.published: list[int] = []
        self.resyncs: list[str] = []

    def publish_order(self, seq, txn, owner_id, old_owner_id, frame) -> None:
        self.published.append(seq)

    def publish_quote(self, instrument, frame) -> None: ...

    def advance_watermark(self, watermark) -> None: ...

    def resync_all(self, reason) -> None:
        self.resyncs.append(reason)

    def identities(self, user_id=None):
        return Identities(set(), set(), set())

    def apply_rights(self, checked, rights) -> None: ...


async def test_an_event_behind_the_watermark_means_resync():
    from db.listener import Listener

    sink = RecordingSink()

    async def unused(*_):
        raise AssertionError("not needed")

    listener = Listener("postgresql://unused", sink, unused, unused, unused)
    frame = '{"type" : "order", "op" : "insert", "seq" : 1, "order" : {}}'
    # seq 1 of transaction 100 says every transaction below 100 has finished ...
    await listener._dispatch("orders", f"1 100 100 7 - {frame}")
    # ... so transaction 99 arriving afterwards is a break nothing explains.
    await listener._dispatch("orders", f"2 99 99 7 - {frame}")
    assert sink.published == [1, 2] and sink.resyncs == ["gap detected"]
    # Later events of the same transaction are normal.
    await listener._dispatch("orders", f"3 100 100 7 - {frame}")
    assert sink.resyncs == ["gap detected"]


async def test_listener_overflow_mid_transaction_loses_nothing(db_url, tmp_path, make_user,
                                                               sql):
    """A bulk UPDATE overflows a tiny listener queue part-way through one transaction:
    the pump replays the rest of that transaction (and what followed) from the log."""
    proc = ServerProcess(db_url, tmp_path, extra_env={"ORDERSTREAM_LISTENER_QUEUE_SIZE": "50"})
    proc.start()
    try:
        alice = make_user()
        async with open_socket(proc, alice) as ws:
            await ws.subscribe_orders()
            sql.execute("INSERT INTO orders (owner_id, instrument, quantity, price)"
                        " SELECT %s, 'BULK', 1, 1 FROM generate_series(1, 600)", (alice.id,))
            sql.execute("UPDATE orders SET price = 2 WHERE owner_id = %s", (alice.id,))
            sql.execute("UPDATE orders SET price = 3 WHERE owner_id = %s", (alice.id,))
            seen: dict[int, list[tuple[str, str]]] = {}
            for _ in range(1800):
                event = await ws.recv_type("order", timeout=15)
                seen.setdefault(event["order"]["id"], []).append(
                    (event["op"], event["order"]["price"]))
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
