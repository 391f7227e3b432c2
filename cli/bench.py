"""The pieces every `server.py bench` scenario shares: a real server process on a free port,
percentiles, a subscribed socket; and the two timings that need only that server: big
statements to one socket (plain and batched), and the listener's recovery.

The scenarios (cli/bench_suite.py runs them) write through plain SQL, as any writer would,
and time the frames that arrive on real WebSocket connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psycopg
import websockets

import config

ROOT = Path(__file__).resolve().parent.parent


def _now_ms() -> float:
    return time.time() * 1000


def _pct(values: list[float], q: float) -> float:
    """The q-quantile of `values` (NaN for none: a run where nothing arrived)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_server(url: str, settings: config.Settings, workers: int = 1,
                  **env_extra: str) -> tuple[subprocess.Popen[bytes], int]:
    """`server.py serve` with `workers` processes on a free port, healthy; and the port."""
    port = _free_port()
    env = {**os.environ, "DATABASE_URL": url, "ORDERSTREAM_LOG_LEVEL": "warning",
           "ORDERSTREAM_DATA_DIR": str(settings.data_path), **env_extra}
    command = [sys.executable, str(ROOT / "server.py"), "serve", "--port", str(port),
               "--workers", str(workers)]
    proc = subprocess.Popen(command, cwd=ROOT, env=env)  # noqa: S603 (our own fixed argv)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc, port
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.terminate()
    raise RuntimeError("the bench server did not start")


async def _socket(port: int, token: str) -> websockets.ClientConnection:
    ws = await websockets.connect(f"ws://127.0.0.1:{port}/ws",
                                  additional_headers={"Authorization": f"Bearer {token}"},
                                  max_size=2**24)
    await ws.send(json.dumps({"op": "subscribe", "channel": "orders"}))
    frame = json.loads(await ws.recv())
    assert frame["type"] == "subscribed", frame
    return ws


async def _next_order(ws: websockets.ClientConnection) -> tuple[dict, float]:
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if frame.get("type") == "order":
            return frame, _now_ms()


async def _big_statement(db: psycopg.AsyncConnection, port: int, staff_token: str,
                         owner_id: int, statement: str, params: tuple, rows: int,
                         batch: bool = False) -> float:
    """Seconds from the commit of one big statement to the last of its `rows` frames at a
    staff "*" socket (frames counted, not decoded: the server's time, not this client's;
    only events of the statement's own op count, not those of a statement before it)."""
    op_mark = '"op" : "' + statement.split()[0].lower() + '"'
    async with _orders_socket(port, staff_token, {"owner": "*", "batch": batch}) as ws:

        async def count() -> float:
            await _events(ws, rows, op_mark)
            return time.perf_counter()

        counter = asyncio.create_task(count())
        await db.execute(statement, params)
        committed = time.perf_counter()
        return await counter - committed


async def replay_rates(db: psycopg.AsyncConnection, port: int, staff_token: str,
                       owner_token: str, owner_id: int, rows: int) -> dict[str, float]:
    """Events/s of a resume with `after` and `"batch": true` over one `rows`-row UPDATE of
    one owner's orders made while the socket was away, subscribe sent to last event: a
    staff "*" socket, then one of the owner's (the same events, read for one owner)."""
    await db.execute("INSERT INTO orders (owner_id, instrument, quantity, price)"
                     " SELECT %s, 'REPLAY', 1, g FROM generate_series(1, %s) g",
                     (owner_id, rows))
    readers = {"staff": (staff_token, {"owner": "*"}), "owner": (owner_token, {})}
    cursors = {}
    try:
        marker = (await (await db.execute(
            "SELECT min(id) FROM orders WHERE owner_id = %s AND instrument = 'REPLAY'",
            (owner_id,))).fetchone())[0]
        for name, (token, scope) in readers.items():
            async with _orders_socket(port, token, scope) as ws:
                await db.execute("UPDATE orders SET quantity = quantity + 1 WHERE id = %s",
                                 (marker,))
                # The cursor of the marker's own event: earlier statements' events (this
                # INSERT's, the batch scenario's) may still be on their way to staff.
                while True:
                    event = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    if event.get("op") == "update" and event["order"]["id"] == marker:
                        break
                cursors[name] = event["cursor"]
        await db.execute("UPDATE orders SET price = price + 1"
                         " WHERE owner_id = %s AND instrument = 'REPLAY'", (owner_id,))
        rates = {}
        for name, (token, scope) in readers.items():
            async with _orders_socket(port, token, None) as ws:
                started = time.perf_counter()
                await ws.send(json.dumps({"op": "subscribe", "channel": "orders", **scope,
                                          "after": cursors[name], "batch": True}))
                await _events(ws, rows, '"op" : "update"')
                rates[name] = rows / (time.perf_counter() - started)
        return rates
    finally:
        await db.execute("DELETE FROM orders WHERE owner_id = %s AND instrument = 'REPLAY'",
                         (owner_id,))


async def _events(ws: websockets.ClientConnection, rows: int, op_mark: str) -> None:
    """Receive until `rows` events carrying `op_mark` came, batched or not (frames counted,
    not decoded: the server's time, not this client's); a resync is an error."""
    got = 0
    while got < rows:
        text = await asyncio.wait_for(ws.recv(), 30)
        if text.startswith('{"type": "resync"'):
            raise RuntimeError(f"resync after {got} events: {text}")
        got += text.count(op_mark)  # one per event


@contextlib.asynccontextmanager
async def _orders_socket(port: int, token: str, scope: dict[str, object] | None
                         ) -> AsyncIterator[websockets.ClientConnection]:
    """A socket of `token`'s, subscribed to orders with `scope` (None: not subscribed)."""
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws", max_size=2**24, max_queue=None,
                                  additional_headers={"Authorization": f"Bearer {token}"}
                                  ) as ws:
        if scope is not None:
            await ws.send(json.dumps({"op": "subscribe", "channel": "orders", **scope}))
            assert json.loads(await ws.recv())["type"] == "subscribed"
        yield ws


async def listener_loss(db: psycopg.AsyncConnection, ws: websockets.ClientConnection,
                         port: int, order_id: int, rounds: int = 5) -> list[tuple[float, float]]:
    """Kill the server's LISTEN connection, write at once, and time (a) until /healthz is
    healthy again and (b) until the write, missed by NOTIFY, arrives replayed."""
    results = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        for i in range(rounds):
            started = time.perf_counter()
            await db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                             " WHERE application_name = 'orderstream-listener'"
                             " AND datname = current_database()")
            await db.execute("UPDATE orders SET price = %s WHERE id = %s", (300 + i, order_id))
            # Events of the owner's other orders (committed before this socket subscribed,
            # still on their way through the hub) may come first.
            while (await _next_order(ws))[0]["order"]["id"] != order_id:
                pass
            delivered = time.perf_counter() - started
            for _ in range(10_000):  # poll /healthz every millisecond, 10 s at most
                if (await client.get("/healthz")).status_code == 200:
                    break
                await asyncio.sleep(0.001)
            healthy = time.perf_counter() - started
            results.append((healthy * 1000, delivered * 1000))
    return results


async def batch_rates(db: psycopg.AsyncConnection, port: int, staff_token: str, owner_id: int,
                      rows: int) -> dict[str, float]:
    """Events/s of one `rows`-row UPDATE to one staff "*" socket, commit to last frame:
    plain frames, then with `"batch": true`."""
    rates = {}
    for name, batch in (("plain", False), ("batch", True)):
        # The INSERT's own frames are all received before the UPDATE is timed.
        await _big_statement(
            db, port, staff_token, owner_id,
            "INSERT INTO orders (owner_id, instrument, quantity, price)"
            " SELECT %s, 'BIG', 1, g FROM generate_series(1, %s) g", (owner_id, rows), rows,
            batch=batch)
        seconds = await _big_statement(
            db, port, staff_token, owner_id,
            "UPDATE orders SET price = price + 1 WHERE owner_id = %s AND instrument = 'BIG'",
            (owner_id,), rows, batch=batch)
        rates[name] = rows / seconds
        await db.execute("DELETE FROM orders WHERE owner_id = %s AND instrument = 'BIG'",
                         (owner_id,))
    return rates
