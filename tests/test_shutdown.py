"""SIGTERM: sockets closed with 1001, a clean exit, no traceback; and several workers."""

from __future__ import annotations

import asyncio
import signal

import pytest
import websockets

from tests.conftest import ServerProcess, insert_order, open_socket


async def test_sigterm_closes_sockets_with_going_away(own_server, make_user):
    alice = make_user()
    async with open_socket(own_server, alice) as ws:
        await ws.subscribe_orders()
        own_server.process.send_signal(signal.SIGTERM)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.conn.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    assert await asyncio.to_thread(own_server.process.wait, 15) == 0
    log = own_server.log()
    assert "Traceback" not in log and "ERROR" not in log, log


async def test_several_workers_deliver_each_event_once_per_session(db_url, tmp_path, make_user,
                                                                   sql):
    proc = ServerProcess(db_url, tmp_path, workers=3)
    proc.start()
    try:
        alice = make_user()
        # Sockets land on whichever worker accepts them; each must see every event once.
        async with (open_socket(proc, alice) as a, open_socket(proc, alice) as b,
                    open_socket(proc, alice) as c, open_socket(proc, alice) as d):
            sockets = [a, b, c, d]
            for ws in sockets:
                await ws.subscribe_orders()
            ids = [insert_order(sql, alice.id, f"W{i}") for i in range(10)]
            for ws in sockets:
                got = [(await ws.recv_type("order"))["order"]["id"] for _ in ids]
                assert got == ids
                await ws.assert_silent(0.2)
    finally:
        assert proc.stop() == 0
    log = proc.log()
    assert "Traceback" not in log, log
