"""The change log's reads against PostgreSQL: pages bounded in UTF-8 bytes that never
claim more than they read, and positions the log no longer covers (or never could)."""

from __future__ import annotations

import asyncio
import json

import psycopg
import websockets

from db.changelog import ChangeLog
from tests.conftest import insert_order, open_socket

MULTIBYTE_NOTE = "é" * 2000  # 4000 bytes in UTF-8, 2000 characters in Python


# -- pages are bounded in UTF-8 bytes, whatever the characters ---------------------------


async def test_a_byte_bounded_page_of_multibyte_rows_is_not_complete(db_url, make_user, sql):
    alice = make_user()
    log = ChangeLog(db_url)
    await log.open()
    try:
        start = (await log.state()).start()
        sql.execute("INSERT INTO orders (owner_id, instrument, quantity, price, note)"
                    " SELECT %s, 'UTF', 1, g, %s FROM generate_series(1, 10) g",
                    (alice.id, MULTIBYTE_NOTE))
        page = await log.read(start, alice.id, None, max_rows=1000, max_bytes=10_000)
        rest = await log.read(page.end(start), alice.id, None)
        # 10 changes in the log; the page stopped at the byte bound after 3 of them.
        assert len(page.changes) + len(rest.changes) == 10, (
            f"page of {len(page.changes)} said complete={page.complete}; the next read"
            f" found {len(rest.changes)}: the other changes are covered but never delivered")
    finally:
        await log.close()


async def test_a_byte_bounded_transaction_read_is_not_done(db_url, make_user, sql):
    alice = make_user()
    log = ChangeLog(db_url)
    await log.open()
    try:
        xid = sql.execute(
            "WITH i AS (INSERT INTO orders (owner_id, instrument, quantity, price, note)"
            " SELECT %s, 'UTF', 1, g, %s FROM generate_series(1, 10) g RETURNING id)"
            " SELECT pg_current_xact_id()::text::bigint", (alice.id, MULTIBYTE_NOTE)).fetchone()[0]
        changes, done = await log.read_transaction(xid, 0, 1000, 10_000)
        assert done is False or len(changes) == 10, (
            f"read_transaction returned {len(changes)} of 10 changes and done=True")
    finally:
        await log.close()


async def test_a_bulk_statement_of_multibyte_rows_reaches_staff_completely(
        server, make_user, sql):
    """150 rows of ~30 KB UTF-8 (~15 K characters) each: the listener's bulk read (4 MiB
    pages) and the session's catch-up (512 KiB pages) stop at the byte bound but report
    the page complete."""
    staff, alice = make_user(staff=True), make_user()
    note = "é" * 15_000
    async with websockets.connect(server.ws_url, additional_headers=staff.auth,
                                  max_size=2**22) as ws:
        await ws.send(json.dumps({"op": "subscribe", "channel": "orders", "owner": "*"}))
        assert json.loads(await ws.recv())["type"] == "subscribed"
        sql.execute("INSERT INTO orders (owner_id, instrument, quantity, price, note)"
                    " SELECT %s, 'BIGUTF', 1, g, %s FROM generate_series(1, 150) g",
                    (alice.id, note))
        marker = insert_order(sql, alice.id, "MARKER")  # commits after the bulk statement
        ids: set[int] = set()
        resyncs = 0
        async with asyncio.timeout(20):
            while True:
                frame = json.loads(await ws.recv())
                if frame["type"] == "resync":
                    resyncs += 1
                elif frame["type"] == "order":
                    if frame["order"]["id"] == marker:
                        break
                    ids.add(frame["order"]["id"])
        assert resyncs == 0 and len(ids) == 150, f"{len(ids)} of 150 rows, {resyncs} resyncs"


# -- a cursor from another database (restored, re-created) gets resync ------------------


async def test_a_cursor_the_database_cannot_have_issued_is_not_silently_accepted(
        server, make_user, sql):
    alice = make_user()
    now = sql.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()[0]
    cursor = f"p{now + 1_000_000}"  # e.g. kept by a client across a database restore
    async with open_socket(server, alice) as ws:
        await ws.subscribe_orders(after=cursor)
        order_id = insert_order(sql, alice.id, "LATER")
        frame = await ws.recv(timeout=5)  # TimeoutError: the session skips everything
        assert frame["type"] == "resync" or frame["order"]["id"] == order_id


# -- TRUNCATE expires only the cursors that did not see it ------------------------------


async def test_after_truncate_an_open_transaction_does_not_expire_fresh_cursors(
        server, make_user, sql, db_url):
    alice = make_user()
    with psycopg.connect(db_url) as other:  # any transaction with an xid (no orders)
        other.execute("SELECT pg_current_xact_id()")
        sql.execute("TRUNCATE orders")
        async with open_socket(server, alice) as ws:
            await ws.subscribe_orders()
            insert_order(sql, alice.id, "AFTER")
            cursor = (await ws.recv_type("order"))["cursor"]  # taken after the TRUNCATE
        missed = insert_order(sql, alice.id, "MISSED")
        async with open_socket(server, alice) as ws:
            await ws.subscribe_orders(after=cursor)
            frame = await ws.recv()
        other.rollback()
    assert frame["type"] == "order" and frame["order"]["id"] == missed, (
        f"cursor {cursor!r}, taken after the TRUNCATE, got {frame!r}")
