"""The Python client (orderstream_client) against the real server: psql writes arrive, a
server restart loses nothing and repeats nothing, resync surfaces and the Book reloads, the
version rule, and the example in docs/client.md runs as written."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

import orderstream_client
from orderstream_client import Book, Stream, StreamError
from tests.conftest import ROOT, ServerProcess, User, insert_order
from tests.support.database import new_user, own_database


async def next_event(stream: Stream, timeout: float = 10.0) -> dict[str, Any]:
    return await asyncio.wait_for(anext(stream), timeout)


async def assert_silent(stream: Stream, timeout: float = 0.5) -> None:
    """Prove nothing more arrives: wait `timeout` for an event and expect none."""
    try:
        event = await asyncio.wait_for(anext(stream), timeout)
    except TimeoutError:
        return
    raise AssertionError(f"expected no event, got {event!r}")


def db_orders(conn: psycopg.Connection, owner_id: int | None) -> dict[int, tuple[int, str]]:
    """{id: (version, price)} of an owner's orders (everyone's with None), from the table."""
    rows = conn.execute(
        "SELECT id, version, price::text FROM orders WHERE %s::bigint IS NULL OR owner_id = %s",
        (owner_id, owner_id)).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def book_orders(book: Book) -> dict[int, tuple[int, str]]:
    return {i: (int(o["version"]), o["price"]) for i, o in book.orders().items()}


async def test_client_receives_psql_writes(server: ServerProcess, make_user: Any,
                                           sql: psycopg.Connection) -> None:
    user: User = make_user()
    async with orderstream_client.connect(server.base_url, token=user.token) as stream:
        assert stream.owner == user.id
        start = stream.cursor
        assert start
        order_id = insert_order(sql, user.id)
        sql.execute("UPDATE orders SET status = 'filled' WHERE id = %s", (order_id,))
        sql.execute("DELETE FROM orders WHERE id = %s", (order_id,))
        events = [await next_event(stream) for _ in range(3)]
        assert [(e["type"], e["op"], e["order"]["id"]) for e in events] == [
            ("order", "insert", order_id), ("order", "update", order_id),
            ("order", "delete", order_id)]
        assert events[1]["order"]["status"] == "filled"
        assert stream.cursor == events[-1]["cursor"] != start
        await assert_silent(stream)


async def test_client_resumes_after_a_cursor(server: ServerProcess, make_user: Any,
                                             sql: psycopg.Connection) -> None:
    user: User = make_user()
    async with orderstream_client.connect(server.base_url, token=user.token) as stream:
        first = insert_order(sql, user.id)
        assert (await next_event(stream))["order"]["id"] == first
        cursor = stream.cursor
    missed = [insert_order(sql, user.id, price=str(p)) for p in (1, 2)]
    async with orderstream_client.connect(server.base_url, token=user.token,
                                          after=cursor) as stream:
        got = [(await next_event(stream))["order"]["id"] for _ in missed]
        assert got == missed
        await assert_silent(stream)


async def test_a_batch_stream_hands_out_each_event_with_its_cursor(
        server: ServerProcess, make_user: Any, sql: psycopg.Connection) -> None:
    """With batch=True a 300-row statement comes packed; the stream yields the same events as a
    plain stream, one by one, each with its cursor, and a resume from a cursor in the middle
    of a batch brings exactly the rest."""
    user: User = make_user()
    async with orderstream_client.connect(server.base_url, token=user.token,
                                          batch=True) as batched, \
            orderstream_client.connect(server.base_url, token=user.token) as plain:
        assert (batched.batch, plain.batch) == (True, False)
        sql.execute("INSERT INTO orders (owner_id, instrument, quantity, price)"
                    " SELECT %s, 'BATCHED', 1, g FROM generate_series(1, 300) g", (user.id,))
        got, unpacked = [], 0
        for _ in range(300):
            got.append(await next_event(batched))
            assert batched.cursor == got[-1]["cursor"]  # moves event by event
            unpacked += bool(batched._pending)  # the rest of a batch frame, still to come
        assert unpacked > 0, "no batch frame came"
        want = [await next_event(plain) for _ in range(300)]

        def without_cursor(event: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in event.items() if k != "cursor"}

        assert [without_cursor(e) for e in got] == [without_cursor(e) for e in want]
        assert [e["order"]["price"] for e in got] == [str(p) for p in range(1, 301)]
        assert len({e["cursor"] for e in got}) == 300
        await assert_silent(batched)
    async with orderstream_client.connect(server.base_url, token=user.token, batch=True,
                                          after=got[149]["cursor"]) as resumed:
        rest = [await next_event(resumed) for _ in range(150)]
        assert [without_cursor(e) for e in rest] == [without_cursor(e) for e in got[150:]]
        await assert_silent(resumed)


async def test_closing_ends_the_iteration_in_the_middle_of_a_batch(
        server: ServerProcess, make_user: Any, sql: psycopg.Connection) -> None:
    user: User = make_user()
    async with orderstream_client.connect(server.base_url, token=user.token,
                                          batch=True) as stream:
        sql.execute("INSERT INTO orders (owner_id, instrument, quantity, price)"
                    " SELECT %s, 'BATCHED', 1, g FROM generate_series(1, 300) g", (user.id,))
        first = await next_event(stream)
        while not stream._pending:  # until an event comes out of a batch frame
            first = await next_event(stream)
        await stream.aclose()
        with pytest.raises(StopAsyncIteration):
            await anext(stream)
        assert stream.cursor == first["cursor"]  # a resume from here gets the rest


async def test_client_survives_a_server_restart(own_server: ServerProcess, make_user: Any,
                                                sql: psycopg.Connection) -> None:
    """Stop the server, write while it is down, start it again on the same port: the client
    reconnects by itself and gets exactly what it missed, then live events."""
    user: User = make_user()
    async with orderstream_client.connect(own_server.base_url, token=user.token,
                                          retry_first=0.05, retry_cap=0.5) as stream:
        before = insert_order(sql, user.id)
        assert (await next_event(stream))["order"]["id"] == before

        code = await asyncio.to_thread(own_server.stop)
        assert code is not None, "the server was not running"
        with pytest.raises(httpx.ConnectError):  # nothing listens on its port now
            await asyncio.to_thread(httpx.get, f"http://127.0.0.1:{own_server.port}/healthz")
        down = [insert_order(sql, user.id, price=str(p)) for p in (1, 2, 3)]
        sql.execute("UPDATE orders SET price = 9 WHERE id = %s", (down[0],))
        sql.execute("DELETE FROM orders WHERE id = %s", (down[1],))
        await asyncio.to_thread(own_server.start)

        seen = [await next_event(stream, timeout=20) for _ in range(5)]
        assert [(e["op"], e["order"]["id"]) for e in seen] == [
            ("insert", down[0]), ("insert", down[1]), ("insert", down[2]),
            ("update", down[0]), ("delete", down[1])]
        assert stream.reconnects == 1
        after = insert_order(sql, user.id)
        assert (await next_event(stream))["order"]["id"] == after
        await assert_silent(stream)


async def test_resync_surfaces_and_the_book_reloads(server_url: str,
                                                    tmp_path: Path) -> None:
    """TRUNCATE orders cannot be replayed: the stream says `resync`, and the Book reloads
    from the API to exactly what the table holds."""
    with own_database(server_url, "client_resync") as url:
        proc = ServerProcess(url, tmp_path)
        proc.start()
        try:
            staff = new_user(url, staff=True)
            with psycopg.connect(url, autocommit=True) as sql:
                for price in (1, 2, 3):
                    insert_order(sql, staff.id, price=str(price))
                book = Book()
                async with orderstream_client.connect(proc.base_url, token=staff.token,
                                                      owner="*") as stream:
                    await book.reload(stream)
                    assert book_orders(book) == db_orders(sql, None)
                    sql.execute("TRUNCATE orders")
                    kept = insert_order(sql, staff.id, price="7")
                    event = await next_event(stream)
                    assert event == {"type": "resync", "reason": "orders truncated"}
                    await book.reload(stream)
                    assert book_orders(book) == db_orders(sql, None) == {kept: (1, "7")}
                    # The insert after the TRUNCATE may still come: the book ignores it.
                    async for event in stream:
                        book.apply(event)
                        if event["type"] == "order" and event["order"]["id"] == kept:
                            break
                    assert book_orders(book) == {kept: (1, "7")}
        finally:
            proc.stop()


async def test_book_reload_pages_through_every_order(server: ServerProcess, make_user: Any,
                                                     sql: psycopg.Connection) -> None:
    user: User = make_user()
    for price in range(11):
        insert_order(sql, user.id, price=str(price))
    # Pages of 3 (overlapping by one) must still find all 11.
    rows = await orderstream_client.fetch_orders(server.base_url, user.token, page_size=3)
    assert sorted(int(r["id"]) for r in rows) == sorted(db_orders(sql, user.id))
    book = Book()
    async with orderstream_client.connect(server.base_url, token=user.token) as stream:
        await book.reload(stream)
    assert book_orders(book) == db_orders(sql, user.id)


async def test_paging_misses_no_row_while_earlier_rows_are_deleted(
        server: ServerProcess, make_user: Any, db_url: str) -> None:
    """Offsets shift when rows before the read point go away: every row that stays must
    still be read."""
    user: User = make_user()
    with psycopg.connect(db_url, autocommit=True) as conn:
        ids = [insert_order(conn, user.id, price=str(n)) for n in range(60)]
    kept = set(ids[3::4])

    def delete_the_others() -> None:
        with psycopg.connect(db_url, autocommit=True) as conn:
            for order_id in ids:
                if order_id not in kept:
                    conn.execute("DELETE FROM orders WHERE id = %s", (order_id,))

    deleting = asyncio.create_task(asyncio.to_thread(delete_the_others))
    rows = await orderstream_client.fetch_orders(server.base_url, user.token, page_size=3)
    await deleting
    assert kept <= {int(r["id"]) for r in rows}


async def test_refusals_are_errors_not_retries(server: ServerProcess, make_user: Any) -> None:
    with pytest.raises(StreamError, match="403"):
        async with orderstream_client.connect(server.base_url, token="not-a-token"):
            pass
    user: User = make_user()
    with pytest.raises(StreamError, match="forbidden"):
        async with orderstream_client.connect(server.base_url, token=user.token, owner="*"):
            pass


async def test_a_revoked_token_ends_the_stream(server: ServerProcess, make_user: Any,
                                               sql: psycopg.Connection) -> None:
    """Closed with 1008: reconnecting cannot help, so iteration raises instead of retrying."""
    user: User = make_user()
    async with orderstream_client.connect(server.base_url, token=user.token) as stream:
        sql.execute("UPDATE api_tokens SET revoked_at = now() WHERE user_id = %s", (user.id,))
        with pytest.raises(StreamError, match="1008 token revoked"):
            await next_event(stream)
        assert stream.reconnects == 0


# -- the version rule (no server) -----------------------------------------------------


def _event(op: str, order_id: int, version: int, **fields: Any) -> dict[str, Any]:
    return {"type": "order", "op": op, "seq": 1, "ts": 0, "cursor": "p1",
            "order": {"id": order_id, "version": version, **fields}}


def test_book_keeps_the_highest_version() -> None:
    book = Book()
    assert book.apply(_event("insert", 1, 1, price="1"))
    assert book.apply(_event("update", 1, 3, price="3"))
    assert not book.apply(_event("update", 1, 2, price="2"))  # late
    assert not book.apply(_event("update", 1, 3, price="3"))  # duplicate
    assert book.orders() == {1: {"id": 1, "version": 3, "price": "3"}}
    assert not book.apply({"type": "resync", "reason": "cursor expired"})


def test_a_delete_is_a_versioned_tombstone() -> None:
    book = Book()
    book.apply(_event("insert", 1, 1))
    assert book.apply(_event("delete", 1, 2))
    assert book.orders() == {}
    assert book.version(1) == (2, True)
    # A replay may bring an update of the version the delete took away: it stays deleted.
    assert not book.apply(_event("update", 1, 2))
    assert not book.apply(_event("insert", 1, 1))
    assert not book.apply(_event("delete", 1, 2))
    # Moved away and back: an insert above the tombstone brings it back.
    assert book.apply(_event("insert", 1, 3))
    assert book.version(1) == (3, False)
    # A delete older than what is held changes nothing; one at the held version deletes.
    assert not book.apply(_event("delete", 1, 2))
    assert book.apply(_event("delete", 1, 3))
    assert book.orders() == {}


def test_a_page_load_respects_tombstones() -> None:
    book = Book()
    book.apply(_event("insert", 1, 1))
    book.apply(_event("delete", 2, 4))
    book.load([{"id": 2, "version": 4}, {"id": 3, "version": 1}, {"id": 2, "version": 5}])
    # 1 is gone (not in the page), 2 came back above its tombstone, 3 is new.
    assert sorted(book.orders()) == [2, 3]
    assert book.version(2) == (5, False)
    assert not book.apply(_event("update", 3, 1))  # the page already had it
    assert book.apply({"type": "batch", "events": [_event("update", 3, 2)]})


def test_the_book_forgets_the_oldest_tombstones() -> None:
    book = Book(max_tombstones=2)
    for order_id in (1, 2, 3):
        book.apply(_event("delete", order_id, 1))
    assert book.version(1) is None
    assert book.version(3) == (1, True)


# -- docs/client.md --------------------------------------------------------------------


def _example() -> str:
    text = (ROOT / "docs" / "client.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "docs/client.md has no python example"
    return blocks[0]


def _read_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline()


async def test_the_documented_example_runs(server: ServerProcess, make_user: Any,
                                           sql: psycopg.Connection, tmp_path: Path) -> None:
    example = _example()
    assert len(example.strip().splitlines()) <= 25
    script = tmp_path / "example.py"
    script.write_text(example)
    user: User = make_user()
    existing = insert_order(sql, user.id)
    env = {**os.environ, "ORDERSTREAM_URL": server.base_url, "ORDERSTREAM_TOKEN": user.token}
    # Run from elsewhere: the installed package, not the checkout, must provide the import.
    with subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            async def line() -> str:
                # Read in a thread, waited for with a timeout: a broken example fails, not
                # hangs.
                return await asyncio.wait_for(asyncio.to_thread(_read_line, proc), 15)

            first = await line()
            assert first.startswith("1 orders, cursor p"), (
                first + (proc.stderr.read() if proc.stderr and proc.poll() is not None else ""))
            sql.execute("UPDATE orders SET price = 120 WHERE id = %s", (existing,))
            new = insert_order(sql, user.id, price="99")
            sql.execute("DELETE FROM orders WHERE id = %s", (existing,))
            assert [await line() for _ in range(3)] == [
                f"update {existing} 120 -> 1 orders\n", f"insert {new} 99 -> 2 orders\n",
                f"delete {existing} 120 -> 1 orders\n"]
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    # Ctrl-C ends it quietly.
    assert proc.returncode == 0
