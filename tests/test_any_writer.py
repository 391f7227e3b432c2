"""Any writer (here: plain SQL on a separate connection, as psql would) reaches the owner's
socket, and only the sockets allowed to see it."""

from __future__ import annotations

from decimal import Decimal

import psycopg
import pytest

from tests.conftest import ServerProcess, insert_order, open_socket
from tests.support.database import new_user, own_database
from tests.test_rights_revocation import expect_close


async def test_sql_insert_update_delete_reach_the_owner(server, make_user, sql):
    alice, bob, staff = make_user(), make_user(), make_user(staff=True)
    async with (
        open_socket(server, alice) as alice_ws,
        open_socket(server, bob) as bob_ws,
        open_socket(server, staff) as staff_ws,
    ):
        subscribed = await alice_ws.subscribe_orders()
        assert subscribed["channel"] == "orders" and isinstance(subscribed["seq"], int)
        await bob_ws.subscribe_orders()
        await staff_ws.subscribe_orders(owner="*")

        order_id = insert_order(sql, alice.id, "ACME", "10", "101.50")
        inserted = await alice_ws.recv_type("order")
        assert inserted["op"] == "insert"
        order = inserted["order"]
        assert order["id"] == order_id and order["owner_id"] == alice.id
        assert order["owner"] == alice.username
        assert (order["quantity"], order["price"]) == ("10", "101.50")  # decimal strings, exact
        assert order["side"] == "buy" and order["status"] == "new" and order["version"] == 1
        assert isinstance(inserted["ts"], int | float) and isinstance(inserted["cursor"], str)

        sql.execute("UPDATE orders SET price = 102.25 WHERE id = %s", (order_id,))
        updated = await alice_ws.recv_type("order")
        assert updated["op"] == "update" and updated["order"]["price"] == "102.25"
        assert updated["order"]["version"] == 2
        assert updated["seq"] > inserted["seq"]
        assert updated["order"]["updated_at"] >= order["updated_at"]

        sql.execute("DELETE FROM orders WHERE id = %s", (order_id,))
        deleted = await alice_ws.recv_type("order")
        assert deleted["op"] == "delete" and deleted["order"]["id"] == order_id
        assert deleted["seq"] > updated["seq"]

        staff_seen = [await staff_ws.recv_type("order") for _ in range(3)]
        assert [e["op"] for e in staff_seen] == ["insert", "update", "delete"]
        assert [e["seq"] for e in staff_seen] == [inserted["seq"], updated["seq"], deleted["seq"]]

        await bob_ws.assert_silent()


async def test_writes_in_the_replica_replication_role_announce_too(server, make_user, db_url):
    """`SET session_replication_role = replica` (a superuser, a logical replication apply
    worker, a restore) skips triggers that fire only in the origin role: ours announce
    always, so such writes reach the owner, and a revoked token still closes its socket. A
    row that brings its own version and times (replicated, restored) keeps them; an UPDATE
    that leaves the version alone still gets a new one."""
    alice = make_user()
    async with open_socket(server, alice) as ws:
        await ws.subscribe_orders()
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("SET session_replication_role = replica")
            order_id = insert_order(conn, alice.id)
            inserted = await ws.recv_type("order")
            assert (inserted["op"], inserted["order"]["id"]) == ("insert", order_id)
            assert inserted["order"]["version"] == 1  # the column's default
            conn.execute("UPDATE orders SET price = 777 WHERE id = %s", (order_id,))
            updated = await ws.recv_type("order")
            assert updated["order"]["price"] == "777" and updated["order"]["version"] == 2
            conn.execute("UPDATE orders SET price = 778, version = 9 WHERE id = %s",
                         (order_id,))
            assert (await ws.recv_type("order"))["order"]["version"] == 9
            restored = conn.execute(
                "INSERT INTO orders (owner_id, instrument, quantity, price, version,"
                " created_at, updated_at) VALUES (%s, 'OLD', 1, 1, 7, '2024-05-05Z',"
                " '2024-06-06Z') RETURNING id", (alice.id,)).fetchone()[0]
            event = await ws.recv_type("order")
            assert (event["order"]["id"], event["order"]["version"]) == (restored, 7)
            assert event["order"]["updated_at"].startswith("2024-06-06")
            conn.execute("DELETE FROM orders WHERE id = %s", (order_id,))
            assert (await ws.recv_type("order"))["op"] == "delete"
            conn.execute("UPDATE api_tokens SET revoked_at = now() WHERE user_id = %s",
                         (alice.id,))
            assert await expect_close(ws, 1008) == "token revoked"


async def test_a_multi_row_statement_streams_in_row_order(server, make_user, sql):
    """A few rows of one statement arrive in id order (as a VALUES list wrote them), seq
    rising with them; before, the trigger's join handed them over reversed."""
    alice = make_user()
    async with open_socket(server, alice) as ws:
        await ws.subscribe_orders()
        ids = [r[0] for r in sql.execute(
            "INSERT INTO orders (owner_id, instrument, quantity, price) VALUES"
            " (%s, 'FIRST', 1, 1), (%s, 'SECOND', 1, 1), (%s, 'THIRD', 1, 1) RETURNING id",
            (alice.id,) * 3).fetchall()]
        events = [await ws.recv_type("order") for _ in ids]
        assert [e["order"]["instrument"] for e in events] == ["FIRST", "SECOND", "THIRD"]
        assert [e["order"]["id"] for e in events] == sorted(ids)
        sql.execute("UPDATE orders SET price = 2 WHERE owner_id = %s", (alice.id,))
        events = [await ws.recv_type("order") for _ in ids]
        assert [e["order"]["id"] for e in events] == sorted(ids)
        seqs = [e["seq"] for e in events]
        assert seqs == sorted(seqs)


async def test_rolled_back_write_announces_nothing(server, make_user, db_url):
    alice = make_user()
    async with open_socket(server, alice) as ws:
        await ws.subscribe_orders()
        with psycopg.connect(db_url) as conn:
            conn.execute("INSERT INTO orders (owner_id, instrument, quantity, price)"
                         " VALUES (%s, 'ROLLBACK', 1, 1)", (alice.id,))
            conn.rollback()
        await ws.assert_silent(0.5)
        # The socket is alive: the next committed write arrives.
        with psycopg.connect(db_url, autocommit=True) as conn:
            insert_order(conn, alice.id, "AFTER")
        event = await ws.recv_type("order")
        assert event["order"]["instrument"] == "AFTER"


async def test_rolled_back_statements_of_every_size_announce_nothing(server, make_user,
                                                                      db_url):
    """The triggers take three paths (one row, a few rows, more than 100 rows announced in
    bulk); a rollback silences all three."""
    alice = make_user()
    async with open_socket(server, alice) as ws:
        await ws.subscribe_orders()
        with psycopg.connect(db_url) as conn:
            for rows in (1, 5, 150):
                conn.execute("INSERT INTO orders (owner_id, instrument, quantity, price)"
                             " SELECT %s, 'ROLLBACK', 1, g FROM generate_series(1, %s) g",
                             (alice.id, rows))
            conn.execute("UPDATE orders SET price = 0 WHERE owner_id = %s", (alice.id,))
            conn.rollback()
        with psycopg.connect(db_url, autocommit=True) as conn:
            insert_order(conn, alice.id, "AFTER")
        event = await ws.recv_type("order")  # the first event is the committed one
        assert event["order"]["instrument"] == "AFTER"
        await ws.assert_silent(0.5)


async def test_multi_row_statements_reach_only_their_owners(server, make_user, sql):
    """Statements of a few rows (the set-based path): a mixed-owner INSERT, a move of two
    orders in one UPDATE, a DELETE of several; each socket sees exactly its own."""
    alice, bob = make_user(), make_user()
    async with open_socket(server, alice) as a_ws, open_socket(server, bob) as b_ws:
        await a_ws.subscribe_orders()
        await b_ws.subscribe_orders()
        rows = sql.execute(
            "INSERT INTO orders (owner_id, instrument, quantity, price)"
            " VALUES (%s, 'A1', 1, 1), (%s, 'B1', 1, 1), (%s, 'A2', 1, 1), (%s, 'A3', 1, 1),"
            " (%s, 'B2', 1, 1) RETURNING id, owner_id",
            (alice.id, bob.id, alice.id, alice.id, bob.id)).fetchall()
        alices = sorted(i for i, owner in rows if owner == alice.id)
        bobs = sorted(i for i, owner in rows if owner == bob.id)
        got_a = [await a_ws.recv_type("order") for _ in alices]
        got_b = [await b_ws.recv_type("order") for _ in bobs]
        assert sorted(e["order"]["id"] for e in got_a) == alices
        assert sorted(e["order"]["id"] for e in got_b) == bobs
        assert {e["op"] for e in got_a + got_b} == {"insert"}

        moved = alices[:2]
        sql.execute("UPDATE orders SET owner_id = %s WHERE id = ANY(%s)", (bob.id, moved))
        gone = [await a_ws.recv_type("order") for _ in moved]
        arrived = [await b_ws.recv_type("order") for _ in moved]
        assert {(e["op"], e["order"]["id"], e["order"]["version"]) for e in gone} == {
            ("delete", i, 2) for i in moved}
        assert all(set(e["order"]) == {"id", "owner_id", "version"} for e in gone)
        assert {(e["op"], e["order"]["id"]) for e in arrived} == {("insert", i) for i in moved}

        sql.execute("DELETE FROM orders WHERE owner_id = %s", (bob.id,))
        deleted = [await b_ws.recv_type("order") for _ in bobs + moved]
        assert {(e["op"], e["order"]["id"]) for e in deleted} == {
            ("delete", i) for i in bobs + moved}
        await a_ws.assert_silent()
        await b_ws.assert_silent()


async def test_two_identical_updates_in_one_transaction_make_two_events(server, make_user, sql,
                                                                         db_url):
    alice = make_user()
    order_id = insert_order(sql, alice.id)
    async with open_socket(server, alice) as ws:
        await ws.subscribe_orders()
        with psycopg.connect(db_url) as conn:
            conn.execute("UPDATE orders SET price = 5 WHERE id = %s", (order_id,))
            conn.execute("UPDATE orders SET price = 5 WHERE id = %s", (order_id,))
            conn.commit()
        first, second = await ws.recv_type("order"), await ws.recv_type("order")
        assert first["seq"] != second["seq"]
        assert (first["order"]["version"], second["order"]["version"]) == (2, 3)
        await ws.assert_silent()


async def test_bulk_update_announces_every_row(server, make_user, sql):
    alice = make_user()
    ids = [insert_order(sql, alice.id, f"BULK{i}") for i in range(20)]
    async with open_socket(server, alice) as ws:
        await ws.subscribe_orders()
        sql.execute("UPDATE orders SET status = 'cancelled' WHERE owner_id = %s", (alice.id,))
        events = [await ws.recv_type("order") for _ in ids]
        assert sorted(e["order"]["id"] for e in events) == ids
        assert all(e["order"]["status"] == "cancelled" for e in events)
        seqs = [e["seq"] for e in events]
        assert seqs == sorted(seqs)


async def test_copy_writes_are_announced(server, make_user, sql):
    alice = make_user()
    async with open_socket(server, alice) as ws:
        await ws.subscribe_orders()
        with sql.cursor().copy(
            "COPY orders (owner_id, instrument, quantity, price) FROM STDIN") as copy:
            copy.write_row((alice.id, "COPIED", "3", "7.125"))
        event = await ws.recv_type("order")
        assert event["op"] == "insert"
        assert (event["order"]["instrument"], event["order"]["price"]) == ("COPIED", "7.125")


async def test_oversized_row_is_delivered_complete(server, make_user, sql):
    alice = make_user()
    note = "n" * 10_000
    instrument = "I" * 9_000
    async with open_socket(server, alice) as ws:
        await ws.subscribe_orders()
        row = sql.execute(
            "INSERT INTO orders (owner_id, instrument, quantity, price, note)"
            " VALUES (%s, %s, 1, 1, %s) RETURNING id", (alice.id, instrument, note)).fetchone()
        event = await ws.recv_type("order")
        assert event["order"]["id"] == row[0]
        assert event["order"]["note"] == note and event["order"]["instrument"] == instrument
        sql.execute("DELETE FROM orders WHERE id = %s", (row[0],))
        gone = await ws.recv_type("order")
        assert gone["op"] == "delete" and gone["order"]["id"] == row[0]


async def test_owner_change_moves_the_order_between_dashboards(server, make_user, sql):
    alice, bob = make_user(), make_user()
    order_id = insert_order(sql, alice.id)
    async with open_socket(server, alice) as alice_ws, open_socket(server, bob) as bob_ws:
        await alice_ws.subscribe_orders()
        await bob_ws.subscribe_orders()
        sql.execute("UPDATE orders SET owner_id = %s WHERE id = %s", (bob.id, order_id))
        to_bob = await bob_ws.recv_type("order")
        assert to_bob["order"]["owner_id"] == bob.id and to_bob["order"]["id"] == order_id
        assert to_bob["op"] == "insert"  # new to bob
        from_alice = await alice_ws.recv_type("order")
        assert from_alice["op"] == "delete" and from_alice["order"]["id"] == order_id
        # Alice learns only that the order left, nothing of its new state.
        assert set(from_alice["order"]) == {"id", "owner_id", "version"}


async def test_staff_may_watch_one_owner(server, make_user, sql):
    alice, bob, staff = make_user(), make_user(), make_user(staff=True)
    async with open_socket(server, staff) as ws:
        subscribed = await ws.subscribe_orders(owner=bob.id)
        assert subscribed["owner"] == bob.id
        insert_order(sql, alice.id, "NOT-BOB")
        insert_order(sql, bob.id, "BOB")
        event = await ws.recv_type("order")
        assert event["order"]["instrument"] == "BOB"
        await ws.assert_silent()


async def test_constraints_reject_nonsense_from_sql(make_user, sql):
    alice = make_user()
    bad = [
        ("quantity", "0"), ("quantity", "-1"), ("quantity", "NaN"), ("price", "-0.01"),
        ("price", "Infinity"), ("side", "hold"), ("status", "lost"),
    ]
    for column, value in bad:
        try:
            sql.execute(
                f"INSERT INTO orders (owner_id, instrument, quantity, price, {column})"
                " VALUES (%s, 'X', 1, 1, %s) ON CONFLICT DO NOTHING"
                if column in ("side", "status") else
                "INSERT INTO orders (owner_id, instrument, quantity, price) VALUES (%s, 'X', "
                + ("%s, 1)" if column == "quantity" else "1, %s)"),
                (alice.id, value if column in ("side", "status") else Decimal(value)),
            )
        except psycopg.errors.CheckViolation:
            continue
        raise AssertionError(f"{column}={value!r} was accepted")


async def test_version_and_updated_at_are_kept_by_the_database(make_user, sql):
    alice = make_user()
    order_id = insert_order(sql, alice.id)
    row = sql.execute("UPDATE orders SET version = 99, quantity = 11 WHERE id = %s"
                      " RETURNING version, updated_at > created_at", (order_id,)).fetchone()
    assert row == (2, True)


async def test_truncate_tells_every_session_to_reload(own_server, server_url):
    """TRUNCATE fires no row triggers; sessions get resync and old cursors expire. (On a
    database of its own: truncating the shared one would disturb other tests.)"""
    with own_database(server_url, "truncate") as url:
        user = new_user(url, prefix="trunc")
        proc = ServerProcess(url, own_server.data_dir)
        proc.start()
        try:
            with psycopg.connect(url, autocommit=True) as sql:
                async with open_socket(proc, user) as ws:
                    await ws.subscribe_orders()
                    insert_order(sql, user.id)
                    cursor = (await ws.recv_type("order"))["cursor"]
                    sql.execute("TRUNCATE orders")
                    assert (await ws.recv_type("resync"))["reason"] == "orders truncated"
                async with open_socket(proc, user) as ws:
                    await ws.subscribe_orders(after=cursor)
                    assert (await ws.recv_type("resync"))["reason"] == "cursor expired"
        finally:
            proc.stop()


async def test_an_absurd_quote_is_refused_by_a_constraint(sql):
    with pytest.raises(psycopg.errors.CheckViolation):
        sql.execute("INSERT INTO quotes (instrument, bid) VALUES ('HUGE', 1e7990)")


async def _take(ws, count: int) -> list[dict]:
    return [await ws.recv_type("order") for _ in range(count)]


async def test_a_bulk_statement_moving_some_orders_reaches_each_dashboard_right(
        server, make_user, sql):
    """Over 100 rows, a statement is read back from the change log and handed to the hub
    by pages; a page with an order changing owner goes change by change. Both, in one
    statement: 600 of alice's orders updated, every third of the last 150 moved to bob."""
    alice, bob, staff = make_user(), make_user(), make_user(staff=True)
    ids = [row[0] for row in sql.execute(
        "INSERT INTO orders (owner_id, instrument, quantity, price)"
        " SELECT %s, 'BULK', 1, g FROM generate_series(1, 600) g RETURNING id",
        (alice.id,)).fetchall()]
    moved = {i for i in ids[450:] if i % 3 == 0}
    stays = set(ids) - moved
    async with (
        open_socket(server, alice) as alice_ws,
        open_socket(server, bob) as bob_ws,
        open_socket(server, staff) as staff_ws,
    ):
        await alice_ws.subscribe_orders()
        await bob_ws.subscribe_orders()
        await staff_ws.subscribe_orders(owner="*")
        sql.execute("UPDATE orders SET price = price + 1,"
                    " owner_id = CASE WHEN id = ANY(%s) THEN %s ELSE owner_id END"
                    " WHERE id = ANY(%s)", (list(moved), bob.id, ids))
        to_alice, to_bob, to_staff = (await _take(alice_ws, 600),
                                      await _take(bob_ws, len(moved)),
                                      await _take(staff_ws, 600))
        for events in (to_alice, to_bob, to_staff):
            assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
        assert {(e["op"], e["order"]["id"]) for e in to_alice} == (
            {("delete", i) for i in moved} | {("update", i) for i in stays})
        assert all(set(e["order"]) == {"id", "owner_id", "version"}
                   for e in to_alice if e["op"] == "delete")
        assert {(e["op"], e["order"]["id"], e["order"]["owner_id"]) for e in to_bob} == {
            ("insert", i, bob.id) for i in moved}
        assert {(e["op"], e["order"]["id"]) for e in to_staff} == {("update", i) for i in ids}
        assert to_staff[-1]["cursor"] == to_alice[-1]["cursor"]  # the stream's, after it all

        # No move: the whole statement by pages, the same frames to the owner and to staff.
        sql.execute("UPDATE orders SET price = price + 1 WHERE id = ANY(%s)", (ids,))
        to_alice, to_bob, to_staff = (await _take(alice_ws, len(stays)),
                                      await _take(bob_ws, len(moved)),
                                      await _take(staff_ws, 600))
        assert {e["order"]["id"] for e in to_alice} == stays
        assert {e["order"]["id"] for e in to_bob} == moved
        assert {e["op"] for e in to_alice + to_bob + to_staff} == {"update"}
        by_id = {e["order"]["id"]: e for e in to_staff}
        assert all(by_id[e["order"]["id"]] == e for e in to_alice + to_bob)
        for ws in (alice_ws, bob_ws, staff_ws):
            await ws.assert_silent()
