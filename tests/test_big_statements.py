"""Big statements: one set-based log insert and one notification per statement, and every
row of a 100,000-row statement reaches a staff "*" session soon after commit, with no
resync."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import websockets

from tests.conftest import ServerProcess, User, metrics

pytestmark = pytest.mark.slow

ROWS = 100_000
# How fast is the bench's job (`server.py bench`, "big statements"; issue 7 asked for 2 s and
# this machine gives 1.5-1.9 s on the embedded server when quiet). This bound is for the
# pathological cases (a row-count-blind plan once took 12 minutes) and leaves room for the
# machine's noise: the same code measured 1.7-2.4 s in full-suite runs.
DEADLINE_S = 5.0


async def receive_orders(ws, want: int, timeout: float) -> tuple[dict[int, int], float, int]:
    """Read until `want` order events came: {id: highest version}, the time the last one
    came, and how many frames were resync. Frames are parsed after the last one came, so
    the time measured is the server's, not this client's JSON decoding."""
    raw: list[str] = []
    got = 0
    async with asyncio.timeout(timeout):
        while got < want:
            text = await ws.recv()
            raw.append(text)
            got += text.startswith('{"type" : "order"')
    last = time.perf_counter()
    versions: dict[int, int] = {}
    resyncs = 0
    for frame in map(json.loads, raw):
        if frame["type"] == "resync":
            resyncs += 1
        elif frame["type"] == "order":
            order = frame["order"]
            versions[order["id"]] = max(versions.get(order["id"], 0), order["version"])
    return versions, last, resyncs


async def deliver_statement(server: ServerProcess, staff: User, sql, statement: str,
                            args: tuple, rows: int) -> tuple[float, dict[int, int], int]:
    async with websockets.connect(server.ws_url, additional_headers=staff.auth,
                                  max_queue=None) as ws:
        await ws.send(json.dumps({"op": "subscribe", "channel": "orders", "owner": "*"}))
        assert json.loads(await ws.recv())["type"] == "subscribed"
        reader = asyncio.create_task(receive_orders(ws, rows, 60))
        await asyncio.to_thread(sql.execute, statement, args)
        committed = time.perf_counter()
        versions, last, resyncs = await reader
        return last - committed, versions, resyncs


async def test_a_100k_row_insert_and_update_reach_staff_within_seconds(own_server, make_user, sql):
    staff, alice = make_user(staff=True), make_user()
    took_insert, versions, resyncs = await deliver_statement(
        own_server, staff, sql,
        "INSERT INTO orders (owner_id, instrument, quantity, price)"
        " SELECT %s, 'BIG', 1, g FROM generate_series(1, %s) g", (alice.id, ROWS), ROWS)
    assert resyncs == 0 and len(versions) == ROWS and set(versions.values()) == {1}
    took_update, versions, resyncs = await deliver_statement(
        own_server, staff, sql,
        "UPDATE orders SET price = price + 1 WHERE owner_id = %s", (alice.id,), ROWS)
    assert resyncs == 0 and len(versions) == ROWS and set(versions.values()) == {2}
    counters = await metrics(own_server)
    print(f"\n{ROWS} rows after commit: INSERT {took_insert:.2f} s, UPDATE {took_update:.2f} s;"
          f" {counters['orderstream_catch_ups_total']:.0f} catch-ups")
    assert took_insert < DEADLINE_S and took_update < DEADLINE_S


async def test_a_big_statement_in_a_transaction_with_small_ones_keeps_commit_order(
        own_server, make_user, sql):
    """Single-row statements around a bulk one in the same transaction: every change once,
    and the order's last change last."""
    alice = make_user()
    async with websockets.connect(own_server.ws_url, additional_headers=alice.auth) as ws:
        await ws.send(json.dumps({"op": "subscribe", "channel": "orders"}))
        assert json.loads(await ws.recv())["type"] == "subscribed"
        with sql.transaction():
            first = sql.execute(
                "INSERT INTO orders (owner_id, instrument, quantity, price)"
                " VALUES (%s, 'ONE', 1, 1) RETURNING id", (alice.id,)).fetchone()[0]
            sql.execute("INSERT INTO orders (owner_id, instrument, quantity, price)"
                        " SELECT %s, 'MANY', 1, g FROM generate_series(1, 500) g", (alice.id,))
            sql.execute("UPDATE orders SET price = 42 WHERE id = %s", (first,))
        seen = []
        async with asyncio.timeout(10):
            while len(seen) < 502:
                frame = json.loads(await ws.recv())
                assert frame["type"] == "order", frame
                seen.append((frame["order"]["id"], frame["order"]["version"], frame["seq"]))
        assert len(set(seen)) == 502
        assert seen[0][:2] == (first, 1) and seen[-1][:2] == (first, 2)
        assert [s for _, _, s in seen] == sorted(s for _, _, s in seen)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await ws.recv()
