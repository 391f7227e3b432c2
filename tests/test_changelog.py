"""The change log's reads against PostgreSQL: pages bounded in UTF-8 bytes that never
claim more than they read, and positions the log no longer covers (or never could)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import psycopg
import pytest
import websockets

from db import changelog
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


# -- a read for one owner walks its changes in order, whatever the transaction's size -----

BIG = 5000  # changes in one statement, one in ten of them alice's
PAGE = 100


def _scanned(plan: dict[str, Any]) -> int:
    """Rows the plan's scans of order_changes read: returned or filtered out, all loops."""
    return sum((node["Actual Rows"] + node.get("Rows Removed by Filter", 0)
                + node.get("Rows Removed by Index Recheck", 0)) * node["Actual Loops"]
               for node in _nodes(plan) if node.get("Relation Name") == "order_changes")


def _outline(plan: dict[str, Any]) -> list[str]:
    """The plan's nodes, depth first, with the rows each produced."""
    return [f"{node['Node Type']} {node.get('Index Name', '')} {node['Actual Rows']}"
            for node in _nodes(plan)]


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    out, stack = [], [plan]
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(reversed(node.get("Plans", [])))
    return out


def _big_statement(sql: psycopg.Connection, alice: int, bob: int) -> int:
    """One INSERT of BIG orders, every tenth alice's, the others bob's; its xid."""
    return sql.execute(
        "WITH i AS (INSERT INTO orders (owner_id, instrument, quantity, price)"
        " SELECT CASE WHEN g %% 10 = 0 THEN %s ELSE %s END, 'BIG', 1, g"
        " FROM generate_series(1, %s) g RETURNING id)"
        " SELECT pg_current_xact_id()::text::bigint FROM i LIMIT 1", (alice, bob, BIG)
    ).fetchone()[0]


@pytest.mark.parametrize("plans", ["force_custom_plan", "force_generic_plan"])
async def test_a_page_for_one_owner_reads_what_it_returns_not_the_whole_transaction(
        db_url, make_user, sql, plans):
    """A page of 100 from the middle of a 5,000-change statement, for one owner: as the
    rest of the transaction under way, as a transaction from xmax on, and as a pending one.
    Each scan of the log reads at most the page (per owner column), under custom and generic
    plans alike (asyncpg's prepared statements go generic after five runs). Reading and
    sorting all of the owner's changes for every page made a replay quadratic in the
    statement's size."""
    alice, bob = make_user(), make_user()
    xid = _big_statement(sql, alice.id, bob.id)
    # Moves of alice's orders in a later transaction: rows for the previous-owner branch.
    sql.execute("UPDATE orders SET owner_id = %s WHERE owner_id = %s AND price::int %% 40 = 0",
                (bob.id, alice.id))
    middle = sql.execute("SELECT min(seq) + %s FROM order_changes WHERE xid = %s::text::xid8",
                         (BIG // 2, str(xid))).fetchone()[0]
    # name: query, its arguments ((xid, after seq, rows, bytes[, owner]) or (xmax, pending
    # lows, highs, current xid, rows, bytes, owner)), and the same page in plain SQL.
    alices = "(owner_id = $2 OR old_owner_id = $2)"
    reads = {
        "rest of current": (changelog._PAGE_OF_CURRENT_FOR_OWNER,
                            (str(xid), middle, PAGE, 1 << 20, alice.id),
                            f"xid = $1::text::xid8 AND {alices} AND seq > $3",
                            (str(xid), alice.id, middle)),
        "from xmax": (changelog._PAGE_OF_UNCOVERED_FOR_OWNER,
                      (str(xid), [], [], None, PAGE, 1 << 20, alice.id),
                      f"xid >= $1::text::xid8 AND {alices}", (str(xid), alice.id)),
        "pending": (changelog._PAGE_OF_UNCOVERED_FOR_OWNER,
                    (str(xid + 1), [str(xid)], [str(xid)], None, PAGE, 1 << 20, alice.id),
                    f"xid >= $1::text::xid8 AND {alices}", (str(xid), alice.id)),
        "all owners": (changelog._PAGE_OF_CURRENT, (str(xid), middle, PAGE, 1 << 20),
                       "xid = $1::text::xid8 AND seq > $2", (str(xid), middle)),
    }
    log = ChangeLog(db_url)  # its connections, with their settings
    await log.open()
    try:
        async with log.pool.acquire() as conn:  # released (and reset) if a check fails
            await conn.execute(f"SET plan_cache_mode = {plans}")
            for name, (query, args, where, values) in reads.items():
                rows = await conn.fetch(query, *args)
                expected = await conn.fetch(
                    f"SELECT seq FROM order_changes WHERE {where}"  # fixed text, our parameters
                    f" ORDER BY xid, seq LIMIT {PAGE}", *values)
                assert [r["seq"] for r in rows] == [r["seq"] for r in expected], name
                plan = json.loads(await conn.fetchval(
                    f"EXPLAIN (ANALYZE, FORMAT JSON) {query}", *args))[0]["Plan"]
                assert _scanned(plan) <= 2 * PAGE + 2, (
                    f"{name}: the page of {PAGE} read {_scanned(plan)} rows of the log:"
                    f" {_outline(plan)}")
    finally:
        await log.close()


@pytest.mark.parametrize("max_rows, max_bytes", [(37, 1 << 20), (1000, 2000)])
async def test_pages_for_one_owner_hold_its_changes_and_moves_in_order(
        db_url, make_user, sql, max_rows, max_bytes):
    """Pages through orders moved away from alice (before her own rows: each page merges her
    rows as owner and as previous owner), a statement of mixed owners, more moves, and a
    transaction that was running when the start position was taken (a pending range below
    its xmax); pages of 37 rows, then pages of about four frames (a byte bound: transactions
    are left half read). Each owner gets exactly its changes (bob's moved-in orders,
    alice's moved-away ones), staff all of them, in (xid, seq) order."""
    alice, bob = make_user(), make_user()
    for _ in range(12):
        insert_order(sql, alice.id, "MOVE")
    log = ChangeLog(db_url)
    await log.open()
    try:
        with psycopg.connect(db_url) as running:
            running.execute("INSERT INTO orders (owner_id, instrument, quantity, price)"
                            " SELECT %s, 'EARLY', 1, g FROM generate_series(1, 30) g",
                            (alice.id,))
            running_xid = running.execute("SELECT pg_current_xact_id()::text::bigint"
                                          ).fetchone()[0]
            insert_order(sql, bob.id, "PAST")  # a later xid, committed: the start passes it
            start = (await log.state()).start()
            assert running_xid < start.xmax and not start.finished(running_xid), start
            moved = ("WITH m AS (UPDATE orders SET owner_id = %s WHERE owner_id = %s"
                     " AND instrument = %s AND price::int %% 3 = 0 RETURNING id)"
                     " SELECT pg_current_xact_id()::text::bigint FROM m LIMIT 1")
            xids = [sql.execute(moved, (bob.id, alice.id, "MOVE")).fetchone()[0],
                    _big_statement(sql, alice.id, bob.id),
                    sql.execute(moved, (bob.id, alice.id, "BIG")).fetchone()[0]]
            running.commit()
        xids.append(running_xid)
        for owner in (alice.id, bob.id, None):
            expected = [r[0] for r in sql.execute(
                "SELECT seq FROM order_changes WHERE xid = ANY(%s::text[]::xid8[])"
                " AND (%s::bigint IS NULL OR owner_id = %s OR old_owner_id = %s)"
                " ORDER BY xid, seq", ([str(x) for x in xids], owner, owner, owner))]
            got, position = [], start
            for _ in range(20_000):
                page = await log.read(position, owner, None, max_rows, max_bytes)
                got += [c.seq for c in page.changes]
                position = page.end(position)
                if page.complete:
                    break
            missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
            assert got == expected, (f"owner {owner}: {len(got)} changes read of"
                                     f" {len(expected)}; missing {missing[:5]}, extra"
                                     f" {extra[:5]}, or out of order")
    finally:
        await log.close()


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
