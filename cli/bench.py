"""python server.py bench: commit-to-socket latency, burst throughput, fan-out, writer cost.

It starts a real server process on a free port against the database in use,
makes its own user and orders, writes through plain SQL (as any writer would)
and times the frames that arrive on real WebSocket connections.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
import websockets

import config
from cli.users import create_token, create_user
from web.passwords import Passwords

ROOT = Path(__file__).resolve().parent.parent


def _now_ms() -> float:
    return time.time() * 1000


def _pct(values: list[float], q: float) -> float:
    """The q-quantile of `values` (NaN for none: a run where nothing arrived)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary(values: list[float]) -> str:
    return (f"p50 {_pct(values, 0.50):7.3f} ms   p99 {_pct(values, 0.99):7.3f} ms   "
            f"max {max(values):7.3f} ms   (n={len(values)})")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_server(url: str, settings: config.Settings,
                  **env_extra: str) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    env = {**os.environ, "DATABASE_URL": url, "ORDERSTREAM_LOG_LEVEL": "warning",
           "ORDERSTREAM_DATA_DIR": str(settings.data_path), **env_extra}
    command = [sys.executable, str(ROOT / "server.py"), "serve", "--port", str(port)]
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


async def _latency(db: psycopg.AsyncConnection, ws: websockets.ClientConnection,
                   order_id: int, updates: int) -> tuple[list[float], list[float]]:
    """Per update: trigger ts -> frame received, and execute() start -> frame received."""
    from_trigger, round_trip = [], []
    for i in range(updates):
        started = _now_ms()
        await db.execute("UPDATE orders SET price = %s WHERE id = %s", (100 + i % 50, order_id))
        frame, received = await _next_order(ws)
        from_trigger.append(received - frame["ts"])
        round_trip.append(received - started)
    return from_trigger, round_trip


async def _fanout(db: psycopg.AsyncConnection, sockets: list[websockets.ClientConnection],
                  order_id: int, updates: int) -> list[float]:
    """Per update: trigger ts -> the last of all sockets received it."""
    spans = []
    for i in range(updates):
        await db.execute("UPDATE orders SET quantity = %s WHERE id = %s", (1 + i % 9, order_id))
        results = await asyncio.gather(*(_next_order(ws) for ws in sockets))
        spans.append(max(received for _, received in results) - results[0][0]["ts"])
    return spans


async def _burst(db: psycopg.AsyncConnection, ws: websockets.ClientConnection,
                 owner_id: int, rows: int, rounds: int) -> tuple[int, float]:
    """Update `rows` orders in one statement, `rounds` times; first commit to last frame."""
    started = time.perf_counter()
    for _ in range(rounds):
        await db.execute("UPDATE orders SET status = CASE status WHEN 'new' THEN 'filled'"
                         " ELSE 'new' END WHERE owner_id = %s", (owner_id,))
    total = rows * rounds
    for _ in range(total):
        await _next_order(ws)
    return total, time.perf_counter() - started


async def _big_statement(db: psycopg.AsyncConnection, port: int, staff_token: str,
                         owner_id: int, statement: str, params: tuple, rows: int,
                         batch: bool = False) -> float:
    """Seconds from the commit of one big statement to the last of its `rows` frames at a
    staff "*" socket (frames counted, not decoded: the server's time, not this client's;
    only events of the statement's own op count, not those of a statement before it)."""
    op_mark = '"op" : "' + statement.split()[0].lower() + '"'
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws", max_size=2**24, max_queue=None,
                                  additional_headers={"Authorization": f"Bearer {staff_token}"}
                                  ) as ws:
        await ws.send(json.dumps({"op": "subscribe", "channel": "orders", "owner": "*",
                                  "batch": batch}))
        assert json.loads(await ws.recv())["type"] == "subscribed"

        async def count() -> float:
            got = 0
            while got < rows:
                text = await asyncio.wait_for(ws.recv(), 30)
                if text.startswith('{"type": "resync"'):
                    raise RuntimeError(f"resync after {got} frames: {text}")
                got += text.count(op_mark)  # one per event, batched or not
            return time.perf_counter()

        counter = asyncio.create_task(count())
        await db.execute(statement, params)
        committed = time.perf_counter()
        return await counter - committed


async def _big_statements(db: psycopg.AsyncConnection, port: int, staff_token: str,
                          owner_id: int) -> None:
    print("big statements: commit -> last frame at a staff \"*\" socket (no resync)")
    for rows in (10_000, 100_000):
        insert = await _big_statement(
            db, port, staff_token, owner_id,
            "INSERT INTO orders (owner_id, instrument, quantity, price)"
            " SELECT %s, 'BIG', 1, g FROM generate_series(1, %s) g", (owner_id, rows), rows)
        update = await _big_statement(
            db, port, staff_token, owner_id,
            "UPDATE orders SET price = price + 1 WHERE owner_id = %s AND instrument = 'BIG'",
            (owner_id,), rows)
        await db.execute("DELETE FROM orders WHERE owner_id = %s AND instrument = 'BIG'",
                         (owner_id,))
        print(f"  {rows:>7,} rows   INSERT ... SELECT {insert:6.2f} s   UPDATE {update:6.2f} s"
              f"   ({rows / max(insert, update):,.0f} events/s at least)")
    rows = 100_000
    rates = []
    for batch in (False, True):
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
        rates.append(rows / seconds)
        await db.execute("DELETE FROM orders WHERE owner_id = %s AND instrument = 'BIG'",
                         (owner_id,))
    print(f"  {rows:,}-row UPDATE to one socket: {rates[0]:,.0f} events/s plain,"
          f" {rates[1]:,.0f} events/s with \"batch\": true (ratio {rates[1] / rates[0]:.2f})")


async def _writer_cost(db: psycopg.AsyncConnection, order_id: int, updates: int
                       ) -> tuple[float, float]:
    """Seconds for `updates` single-row autocommit updates with and without user triggers."""

    async def timed() -> float:
        started = time.perf_counter()
        for i in range(updates):
            await db.execute("UPDATE orders SET price = %s WHERE id = %s", (200 + i % 7, order_id))
        return time.perf_counter() - started

    with_triggers = await timed()
    # Replica role skips ordinary triggers for this session only (needs superuser).
    await db.execute("SET session_replication_role = replica")
    try:
        without = await timed()
    finally:
        await db.execute("SET session_replication_role = origin")
    return with_triggers, without


async def _statement_costs(db: psycopg.AsyncConnection, owner_id: int, repeats: int = 5
                           ) -> tuple[float, float, float]:
    """Median seconds for one UPDATE of all the bench owner's rows, rolled back (so: the
    statement's work without commit): with the triggers, without them, and the change-log
    rows alone (the same number of inserts into a scratch copy of order_changes)."""

    async def timed(setup: str, statement: str, params: tuple) -> float:
        runs = []
        for _ in range(repeats):
            await db.execute("BEGIN")
            try:
                if setup:
                    await db.execute(setup)
                started = time.perf_counter()
                await db.execute(statement, params)
                runs.append(time.perf_counter() - started)
            finally:
                await db.execute("ROLLBACK")
        return statistics.median(runs)

    update = "UPDATE orders SET price = price WHERE owner_id = %s"
    full = await timed("", update, (owner_id,))
    bare = await timed("SET LOCAL session_replication_role = replica", update, (owner_id,))
    log_only = await timed(
        "CREATE TEMP TABLE bench_changes (LIKE order_changes INCLUDING ALL) ON COMMIT DROP",
        "INSERT INTO bench_changes (seq, owner_id, frame) SELECT c.seq, c.owner_id, c.frame"
        " FROM order_changes c WHERE c.owner_id = %s LIMIT 1000",
        (owner_id,))
    return full, bare, log_only


async def _listener_loss(db: psycopg.AsyncConnection, ws: websockets.ClientConnection,
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
            frame, _ = await _next_order(ws)
            delivered = time.perf_counter() - started
            assert frame["order"]["id"] == order_id
            for _ in range(10_000):  # poll /healthz every millisecond, 10 s at most
                if (await client.get("/healthz")).status_code == 200:
                    break
                await asyncio.sleep(0.001)
            healthy = time.perf_counter() - started
            results.append((healthy * 1000, delivered * 1000))
    return results


async def _run(url: str, port: int, token: str, staff_token: str, owner_id: int,
               order_ids: list[int], updates: int, burst: int, clients: int) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as db:
        ws = await _socket(port, token)
        extra = [await _socket(port, token) for _ in range(clients)]
        try:
            # Warm-up: connections, plans, JIT of nothing, caches.
            await _latency(db, ws, order_ids[0], 50)
            for other in extra:
                while True:
                    try:
                        await asyncio.wait_for(other.recv(), 0.2)
                    except TimeoutError:
                        break
            from_trigger, round_trip = await _latency(db, ws, order_ids[0], updates)
            print(f"commit-to-socket, {updates} single-row updates (1 socket)")
            print(f"  trigger ts -> frame received    {_summary(from_trigger)}")
            print(f"  UPDATE sent -> frame received   {_summary(round_trip)}")

            fan_updates = max(50, updates // 5)
            sockets = [ws, *extra]
            spans = await _fanout(db, sockets, order_ids[1], fan_updates)
            print(f"fan-out to {len(sockets)} sockets of one owner, {fan_updates} updates")
            print(f"  trigger ts -> last socket       {_summary(spans)}")
            ratio = _pct(spans, 0.5) / _pct(from_trigger, 0.5)
            print(f"  ratio p50 fan-out / p50 single  {ratio:.2f}")

            rounds = max(1, burst // len(order_ids))
            for other in extra:
                await other.close()
            extra = []
            total, seconds = await _burst(db, ws, owner_id, len(order_ids), rounds)
            print(f"burst: {total} events from {rounds} multi-row UPDATEs of {len(order_ids)} rows")
            print(f"  {seconds:.3f} s to the last frame = {total / seconds:,.0f} events/s")

            losses = await _listener_loss(db, ws, port, order_ids[4])
            print(f"listener connection killed (pg_terminate_backend), {len(losses)} times")
            print("  healthy again after     " + ", ".join(f"{h:.0f}" for h, _ in losses) + " ms")
            print("  missed write delivered  " + ", ".join(f"{d:.0f}" for _, d in losses)
                  + " ms (replayed from the change log, no resync)")

            await _big_statements(db, port, staff_token, owner_id)

            with_t, without_t = await _writer_cost(db, order_ids[2], updates)
            print(f"writer cost, {updates} single-row autocommit UPDATEs")
            print(f"  with triggers    {with_t * 1e6 / updates:8.1f} us/update")
            print(f"  without          {without_t * 1e6 / updates:8.1f} us/update")
            print(f"  ratio            {with_t / without_t:.2f}")

            rows = len(order_ids)
            full, bare, log_only = await _statement_costs(db, owner_id)
            per = 1e6 / rows
            print(f"one UPDATE of {rows} rows, rolled back (the statement's work, no commit)")
            print(f"  with triggers    {full * per:8.1f} us/update")
            print(f"  without          {bare * per:8.1f} us/update")
            print(f"  trigger work     {(full - bare) * per:8.1f} us/update, of which the "
                  f"change-log insert ~{log_only * per:.1f} us "
                  f"({log_only / max(full - bare, 1e-9):.0%}; a temp-table copy, so no WAL)")
        finally:
            await ws.close()
            for other in extra:
                await other.close()


def run_bench(url: str, settings: config.Settings, updates: int, burst: int, clients: int) -> int:
    username = f"bench_{secrets.token_hex(4)}"
    owner_id = create_user(url, Passwords(1, 8192), username, secrets.token_urlsafe(16), False)
    token = create_token(url, username)
    staff_name = f"bench_staff_{secrets.token_hex(4)}"
    staff_id = create_user(url, Passwords(1, 8192), staff_name, secrets.token_urlsafe(16), True)
    staff_token = create_token(url, staff_name)
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "INSERT INTO orders (owner_id, instrument, quantity, price)"
            " SELECT %s, 'BENCH' || g, 1, 100 FROM generate_series(1, 1000) g RETURNING id",
            (owner_id,)).fetchall()
    order_ids = [r[0] for r in rows]
    proc, port = _start_server(url, settings)
    print(f"orderstream bench: server pid {proc.pid} on port {port}, database "
          f"{'embedded' if not settings.database_url else 'DATABASE_URL'}, "
          f"{os.cpu_count()} CPUs")
    try:
        asyncio.run(_run(url, port, token, staff_token, owner_id, order_ids, updates, burst,
                         clients))
    finally:
        proc.terminate()
        proc.wait(15)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DELETE FROM orders WHERE owner_id = %s", (owner_id,))
            conn.execute("DELETE FROM users WHERE id = ANY(%s)", ([owner_id, staff_id],))
    return 0
