"""One row held FOR UPDATE with writes queued on it: those writes answer fast (409 locked or
503 busy, with Retry-After), everyone else is served as usual, and the stream keeps flowing."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from config import load_settings
from db.pool import PoolBusy, create_pool
from tests.conftest import ServerProcess, User, insert_order, open_socket

HOLD = 3.0  # seconds the row stays locked while alice's program hammers it
WRITERS = 12  # alice's concurrent PATCHes
# How many writes the shared server runs at once (db/pool.py; the rest queue for a slot).
SETTINGS = load_settings()
WRITE_SLOTS = max(1, SETTINGS.pool_max_size - SETTINGS.pool_read_reserve)
BIG_NOTE = 9000  # characters: the event's NOTIFY payload passes 8000 bytes


def assert_error_shape(response: httpx.Response, codes: set[str]) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) <= {"code", "message", "fields"} and {"code", "message"} <= set(error), body
    assert error["code"] in codes, body
    assert isinstance(error["message"], str) and error["message"], body
    return error


def row(conn: psycopg.Connection, order_id: int) -> tuple[Any, ...]:
    found = conn.execute("SELECT version, price::text, note FROM orders WHERE id = %s",
                         (order_id,)).fetchone()
    assert found is not None
    return tuple(found)


async def timed(call: Any) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    response = await call
    return response, time.monotonic() - start


# The backends waiting, directly or not, on `holder`. Of the writes queued on one row lock
# only the first waits on the holder itself; the others wait on the tuple lock that first
# one holds (pg_blocking_pids names it, not the holder).
BLOCKED_BEHIND = """
    WITH RECURSIVE waits AS MATERIALIZED (
        SELECT pid, pg_blocking_pids(pid) AS blockers FROM pg_stat_activity
        WHERE wait_event_type = 'Lock'),
    behind (pid) AS (
        SELECT pid FROM waits WHERE %(holder)s = ANY (blockers)
        UNION SELECT w.pid FROM waits w JOIN behind b ON b.pid = ANY (w.blockers))
    SELECT count(*) FROM behind"""


async def wait_until_blocked_by(conn: psycopg.Connection, holder_pid: int, count: int = 1,
                                timeout: float = 10.0) -> None:
    """Wait until `count` backends at once wait on a lock `holder_pid` holds (or on another
    waiter queued for it)."""
    deadline = time.monotonic() + timeout
    while True:
        blocked = conn.execute(BLOCKED_BEHIND,
                               {"holder": holder_pid}).fetchone()[0]  # type: ignore[index]
        if blocked >= count:
            return
        assert time.monotonic() < deadline, (
            f"{blocked} write(s) waiting on the held row after {timeout:g} s, not {count}")
        await asyncio.sleep(0.01)


def spread(times: list[float]) -> str:
    ms = sorted(t * 1000 for t in times)
    return (f"n={len(ms)} min={ms[0]:.0f} median={statistics.median(ms):.0f}"
            f" max={ms[-1]:.0f} ms")


async def test_a_locked_row_stalls_only_the_writes_that_need_it(server, make_user, sql, db_url):
    alice, bob = make_user(), make_user()
    locked = insert_order(sql, alice.id, "LOCK-A", price="10")
    bobs = insert_order(sql, bob.id, "LOCK-B", price="20")
    before = row(sql, locked)
    patches: list[tuple[int, float, httpx.Response]] = []
    gets: list[float] = []
    bob_patches: list[float] = []
    health: list[tuple[int, float]] = []
    events: list[float | None] = []
    stop = asyncio.Event()

    async def alice_writes(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            response, took = await timed(client.patch(f"/api/orders/{locked}",
                                                      json={"price": "11"}))
            patches.append((response.status_code, took, response))

    async def bob_reads(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            response, took = await timed(client.get("/api/orders", params={"limit": 10}))
            assert response.status_code == 200, response.text
            assert [o["id"] for o in response.json()["items"]] == [bobs]
            gets.append(took)
            await asyncio.sleep(0.1)

    async def bob_writes(client: httpx.AsyncClient) -> None:
        price = 20
        while not stop.is_set():
            price += 1
            response, took = await timed(client.patch(f"/api/orders/{bobs}",
                                                      json={"price": str(price)}))
            assert response.status_code == 200, response.text
            bob_patches.append(took)
            await asyncio.sleep(0.1)

    async def probe_health(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            response, took = await timed(client.get("/healthz"))
            health.append((response.status_code, took))
            await asyncio.sleep(0.2)

    def client(user: User | None) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=server.base_url, timeout=30,
                                 headers=user.auth if user else None)

    async with (client(alice) as alice_http, client(bob) as bob_http, client(None) as probe,
                open_socket(server, bob) as bob_ws):
        await bob_ws.subscribe_orders()
        with psycopg.connect(db_url) as holder:  # a psql user: BEGIN; SELECT ... FOR UPDATE
            holder.execute("SELECT id FROM orders WHERE id = %s FOR UPDATE", (locked,))
            started = time.monotonic()
            tasks = [asyncio.create_task(alice_writes(alice_http)) for _ in range(WRITERS)]
            tasks += [asyncio.create_task(bob_reads(bob_http)),
                      asyncio.create_task(probe_health(probe))]
            try:
                # Every write slot is taken by one of alice's PATCHes, queued on the lock.
                await wait_until_blocked_by(sql, holder.info.backend_pid,
                                            min(WRITERS, WRITE_SLOTS))
                # Bob's events keep flowing, an oversized one (announced by reference) too.
                for note in ("small", "n" * BIG_NOTE):
                    sent = time.monotonic()
                    sql.execute("UPDATE orders SET note = %s WHERE id = %s", (note, bobs))
                    try:
                        frame = await bob_ws.recv_type("order", timeout=2)
                    except TimeoutError:
                        events.append(None)  # asserted below, after the HTTP figures
                        continue
                    events.append(time.monotonic() - sent)
                    assert frame["order"]["id"] == bobs and frame["order"]["note"] == note
                # Bob's own writes (their events are left unread) queue behind alice's.
                tasks.append(asyncio.create_task(bob_writes(bob_http)))
                await asyncio.sleep(max(0.0, HOLD - (time.monotonic() - started)))
                stop.set()
                await asyncio.gather(*tasks)
            finally:
                stop.set()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            assert row(sql, locked) == before  # nothing got through while it was locked
            holder.rollback()

        # The lock is gone: the next PATCH goes through.
        done, done_took = await timed(alice_http.patch(f"/api/orders/{locked}",
                                                       json={"price": "11"}))
        assert done.status_code == 200, done.text
        assert done.json()["price"] == "11" and done.json()["version"] == before[0] + 1

    print(f"\nPATCH while locked: {spread([t for _, t, _ in patches])};"
          f" {sum(s == 409 for s, _, _ in patches)} x 409,"
          f" {sum(s == 503 for s, _, _ in patches)} x 503")
    print(f"bob's GET /api/orders: {spread(gets)}")
    print(f"bob's PATCH of his own order: {spread(bob_patches)}")
    print(f"/healthz: {spread([t for _, t in health])},"
          f" statuses {sorted({s for s, _ in health})}")
    print(f"bob's events (small, {BIG_NOTE}-char note):"
          f" {', '.join('none in 2 s' if t is None else f'{t * 1000:.0f} ms' for t in events)}")
    print(f"PATCH after the lock: {done_took * 1000:.0f} ms")

    assert len(patches) >= WRITERS
    for status, took, response in patches:
        assert status in (409, 503), response.text
        assert took < 3.0, (status, took)
        assert response.headers.get("retry-after") == "1"
        error = assert_error_shape(response, {"locked", "busy"})
        if status == 409:
            assert error["code"] == "locked"
            assert f"order {locked} is locked by another transaction" in error["message"]
    assert any(status == 409 for status, _, _ in patches)
    assert len(gets) >= 5 and max(gets) < 1.0, spread(gets)
    assert len(bob_patches) >= 3 and max(bob_patches) < 1.0, spread(bob_patches)
    assert len(health) >= 5 and {status for status, _ in health} == {200}, health
    assert max(t for _, t in health) < 1.0, health
    assert None not in events and max(events) < 0.5, events  # type: ignore[type-var]


@pytest.fixture
def tight_server(db_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    """A server with one write slot, a short acquire timeout and no lock_timeout, so a write
    blocked by a row lock runs into the statement timeout."""
    proc = ServerProcess(db_url, tmp_path, extra_env={
        "ORDERSTREAM_POOL_MAX_SIZE": "4", "ORDERSTREAM_POOL_READ_RESERVE": "3",
        "ORDERSTREAM_POOL_ACQUIRE_TIMEOUT_S": "0.3", "ORDERSTREAM_API_LOCK_TIMEOUT_MS": "0",
        "ORDERSTREAM_API_STATEMENT_TIMEOUT_MS": "2000"})
    proc.start()
    yield proc
    proc.stop()


async def test_statement_timeout_and_a_full_write_queue_answer_503(tight_server, make_user, sql,
                                                                   db_url):
    alice = make_user()
    locked = insert_order(sql, alice.id, "LOCK-T")
    before = row(sql, locked)
    async with httpx.AsyncClient(base_url=tight_server.base_url, headers=alice.auth,
                                 timeout=30) as http:
        with psycopg.connect(db_url) as holder:
            holder.execute("SELECT id FROM orders WHERE id = %s FOR UPDATE", (locked,))
            first = asyncio.create_task(timed(http.patch(f"/api/orders/{locked}",
                                                         json={"price": "2"})))
            # Only once the first holds the only write slot and waits on the lock are the
            # others sure to find the queue full; a fixed sleep lost that race on a busy CI.
            await wait_until_blocked_by(sql, holder.info.backend_pid)
            *queued, (delete, _) = await asyncio.gather(*[
                timed(http.patch(f"/api/orders/{locked}", json={"price": "3"}))
                for _ in range(3)], timed(http.delete(f"/api/orders/{locked}")))
            reads, read_took = await timed(http.get(f"/api/orders/{locked}"))
            health = await http.get("/healthz")
            blocked, blocked_took = await first
            assert row(sql, locked) == before
            holder.rollback()

    for response, took in queued:
        assert response.status_code == 503, response.text
        assert assert_error_shape(response, {"busy"})["message"].startswith("the server is busy")
        assert response.headers.get("retry-after") == "1"
        assert took < 1.0
    assert delete.status_code == 503 and assert_error_shape(delete, {"busy"})
    assert reads.status_code == 200 and read_took < 1.0  # reads do not queue behind writes
    assert health.status_code == 200, health.text
    assert blocked.status_code == 503, blocked.text
    error = assert_error_shape(blocked, {"timeout"})
    assert "statement timeout" in error["message"]
    assert blocked.headers.get("retry-after") == "1"
    assert 1.9 < blocked_took < 4.0


async def test_the_pool_sets_timeouts_and_keeps_connections_back(db_url):
    pool = await create_pool(db_url, 1, 4, acquire_timeout_s=0.2, read_reserve=3,
                             statement_timeout_ms=1500, lock_timeout_ms=250)
    try:
        assert await pool.fetchval("SHOW statement_timeout") == "1500ms"
        assert await pool.fetchval("SHOW lock_timeout") == "250ms"
        assert pool.write_slots == 1
        async with pool.writer():
            with pytest.raises(PoolBusy, match=r"no write slot came free within 0\.2 s"):
                async with pool.writer():
                    pass
            async with pool.acquire():  # a read still gets a connection
                held = await pool.acquire()
                start = time.monotonic()
                with pytest.raises(PoolBusy, match="no database connection came free"):
                    await pool.acquire()
                assert time.monotonic() - start < 1.0
                await pool.ping(timeout=1)  # on the connection kept back for health checks
                await pool.release(held)
        # Every slot came back: a write and then all but one connection at once.
        async with pool.writer():
            pass
        async with pool.acquire(), pool.acquire(), pool.acquire():
            pass
    finally:
        await pool.close()
