"""Resuming with a cursor: exactly the missed events, in order, then live; resync only when
the change log no longer reaches back."""

from __future__ import annotations

import psycopg

from tests.conftest import insert_order, open_socket


async def collect(ws, n: int) -> list[dict]:
    return [await ws.recv_type("order") for _ in range(n)]


async def test_resume_delivers_exactly_the_gap_then_live(server, make_user, sql):
    alice = make_user()
    async with open_socket(server, alice) as ws:
        await ws.subscribe_orders()
        first = insert_order(sql, alice.id, "SEEN")
        seen = await ws.recv_type("order")
        assert seen["order"]["id"] == first
    missed_ids = [insert_order(sql, alice.id, f"MISSED{i}") for i in range(3)]
    sql.execute("UPDATE orders SET price = 7 WHERE id = %s", (missed_ids[0],))
    sql.execute("DELETE FROM orders WHERE id = %s", (missed_ids[1],))
    async with open_socket(server, alice) as ws:
        subscribed = await ws.subscribe_orders(after=seen["cursor"])
        assert subscribed["after"] == seen["cursor"]
        replayed = await collect(ws, 5)
        assert [(e["op"], e["order"]["id"]) for e in replayed] == [
            ("insert", missed_ids[0]), ("insert", missed_ids[1]), ("insert", missed_ids[2]),
            ("update", missed_ids[0]), ("delete", missed_ids[1])]
        assert replayed[3]["order"]["price"] == "7"
        await ws.assert_silent()
        live_id = insert_order(sql, alice.id, "LIVE")
        live = await ws.recv_type("order")
        assert live["order"]["id"] == live_id


async def test_resume_with_the_latest_cursor_repeats_nothing(server, make_user, sql):
    alice = make_user()
    async with open_socket(server, alice) as ws:
        await ws.subscribe_orders()
        for i in range(3):
            insert_order(sql, alice.id, f"N{i}")
        events = await collect(ws, 3)
    async with open_socket(server, alice) as ws:
        await ws.subscribe_orders(after=events[-1]["cursor"])
        await ws.assert_silent(0.5)


async def test_resume_from_the_subscribed_cursor(server, make_user, sql):
    alice = make_user()
    async with open_socket(server, alice) as ws:
        subscribed = await ws.subscribe_orders()
    order_id = insert_order(sql, alice.id, "AFTER-SUBSCRIBED")
    async with open_socket(server, alice) as ws:
        await ws.subscribe_orders(after=subscribed["cursor"])
        event = await ws.recv_type("order")
        assert event["order"]["id"] == order_id
        await ws.assert_silent()


async def test_transactions_committing_out_of_seq_order(server, make_user, db_url):
    """T1 writes first (lower seq) but commits last: a client that saw only T2 gets T1 on
    resume, and a client that saw both gets nothing more."""
    alice = make_user()
    with psycopg.connect(db_url) as t1, psycopg.connect(db_url) as t2:
        async with open_socket(server, alice) as ws:
            await ws.subscribe_orders()
            t1.execute("INSERT INTO orders (owner_id, instrument, quantity, price)"
                       " VALUES (%s, 'T1', 1, 1)", (alice.id,))
            t2.execute("INSERT INTO orders (owner_id, instrument, quantity, price)"
                       " VALUES (%s, 'T2', 1, 1)", (alice.id,))
            t2.commit()
            second = await ws.recv_type("order")
            assert second["order"]["instrument"] == "T2"
        t1.commit()  # while the client is away
    async with open_socket(server, alice) as ws:
        await ws.subscribe_orders(after=second["cursor"])
        first = await ws.recv_type("order")
        assert first["order"]["instrument"] == "T1"
        assert first["seq"] < second["seq"]  # out of seq order, yet not lost
        await ws.assert_silent()
    async with open_socket(server, alice) as ws:
        await ws.subscribe_orders(after=first["cursor"])
        await ws.assert_silent(0.5)  # saw both: nothing repeats


async def test_resume_never_crosses_owners(server, make_user, sql):
    alice, bob = make_user(), make_user()
    async with open_socket(server, alice) as ws:
        await ws.subscribe_orders()
        insert_order(sql, alice.id, "A0")
        alice_cursor = (await ws.recv_type("order"))["cursor"]
    insert_order(sql, alice.id, "A1")
    bob_order = insert_order(sql, bob.id, "B1")
    async with open_socket(server, bob) as ws:
        await ws.subscribe_orders(after=alice_cursor)  # a cursor is a position, not a grant
        event = await ws.recv_type("order")
        assert event["order"]["id"] == bob_order
        await ws.assert_silent()


async def test_resume_over_a_big_statement_with_moves_gives_each_owner_its_own(
        server, make_user, sql):
    """Both owners away while plain SQL inserts 2,400 orders, theirs alternating, and then
    moves every fifth of alice's to bob: each resume reads the log for its owner, more than
    a page of it. Alice gets her inserts and a delete for each order that left her, bob his
    inserts and an insert for each that came to him; neither sees an order of the other's
    that never was theirs, and nothing comes twice or out of seq order."""
    alice, bob = make_user(), make_user()
    cursors = {}
    for user in (alice, bob):
        async with open_socket(server, user) as ws:
            await ws.subscribe_orders()
            insert_order(sql, user.id, "MARK")
            cursors[user.id] = (await ws.recv_type("order"))["cursor"]
    rows = sql.execute(
        "INSERT INTO orders (owner_id, instrument, quantity, price)"
        " SELECT CASE WHEN g %% 2 = 0 THEN %s ELSE %s END, 'GAP', 1, g"
        " FROM generate_series(1, 2400) g RETURNING id, owner_id",
        (alice.id, bob.id)).fetchall()
    moved = {r[0] for r in sql.execute(
        "UPDATE orders SET owner_id = %s WHERE instrument = 'GAP' AND owner_id = %s"
        " AND price::int %% 10 = 0 RETURNING id", (bob.id, alice.id)).fetchall()}
    owned = {user.id: {i for i, owner in rows if owner == user.id} for user in (alice, bob)}
    expected = {  # (op, order id) each owner should get, in seq order
        alice.id: [("insert", i) for i in sorted(owned[alice.id])]
        + [("delete", i) for i in sorted(moved)],
        bob.id: [("insert", i) for i in sorted(owned[bob.id])]
        + [("insert", i) for i in sorted(moved)],
    }
    assert len(moved) == 240
    for user in (alice, bob):
        async with open_socket(server, user) as ws:
            await ws.subscribe_orders(after=cursors[user.id])
            events = await collect(ws, len(expected[user.id]))
            await ws.assert_silent()
        seqs = [e["seq"] for e in events]
        assert seqs == sorted(set(seqs)), f"user {user.id}: repeated or out of order"
        got = [(e["op"], e["order"]["id"]) for e in events]
        # The same events (within a statement the log keeps the statement's own order), the
        # INSERT's before the UPDATE's.
        assert sorted(got) == sorted(expected[user.id]), (
            f"user {user.id}: {len(got)} events; unexpected"
            f" {sorted(set(got) - set(expected[user.id]))[:5]}, missing"
            f" {sorted(set(expected[user.id]) - set(got))[:5]}")
        first_statement = len(owned[user.id])
        assert {i for _, i in got[:first_statement]} == owned[user.id]


async def test_staff_resume_covers_every_owner(server, make_user, sql):
    alice, bob, staff = make_user(), make_user(), make_user(staff=True)
    async with open_socket(server, staff) as ws:
        subscribed = await ws.subscribe_orders(owner="*")
    ids = [insert_order(sql, alice.id), insert_order(sql, bob.id)]
    async with open_socket(server, staff) as ws:
        await ws.subscribe_orders(owner="*", after=subscribed["cursor"])
        events = await collect(ws, 2)
        assert [e["order"]["id"] for e in events] == ids


async def test_bad_cursor_is_an_error_frame(server, make_user):
    alice = make_user()
    async with open_socket(server, alice) as ws:
        too_many_ranges = "1:" + ",".join(str(x) for x in range(2, 200, 2))
        for bad in ["", "x", "5:1-", "-3", "10:4", {"a": 1}, "1:3-2", "+5", "9" * 30,
                    too_many_ranges]:
            await ws.send({"op": "subscribe", "channel": "orders", "after": bad})
            error = await ws.recv_type("error")
            assert error["code"] == "bad_request"


async def test_cursor_past_retention_gets_resync(server, make_user, sql):
    alice = make_user()
    async with open_socket(server, alice) as ws:
        subscribed = await ws.subscribe_orders()
    insert_order(sql, alice.id, "PRUNED")
    # What pruning does (db/queries.py prune_changes): forget rows, move the horizon.
    before = sql.execute("SELECT pruned_xid FROM order_changes_horizon").fetchone()[0]
    sql.execute("UPDATE order_changes_horizon SET pruned_xid = "
                "greatest(pruned_xid, pg_current_xact_id())")
    try:
        async with open_socket(server, alice) as ws:
            await ws.subscribe_orders(after=subscribed["cursor"])
            resync = await ws.recv_type("resync")
            assert resync["reason"] == "cursor expired"
            live = insert_order(sql, alice.id, "STILL-LIVE")
            assert (await ws.recv_type("order"))["order"]["id"] == live
    finally:  # nothing was really pruned: other tests' cursors stay valid
        sql.execute("UPDATE order_changes_horizon SET pruned_xid = %s", (before,))


async def test_resume_in_the_middle_of_a_transaction(server, make_user, sql, db_url):
    """One transaction changes three orders; the client saw only the first event."""
    alice = make_user()
    ids = [insert_order(sql, alice.id, f"MID{i}") for i in range(3)]
    async with open_socket(server, alice) as ws:
        await ws.subscribe_orders()
        with psycopg.connect(db_url) as conn:
            for order_id in ids:
                conn.execute("UPDATE orders SET price = 9 WHERE id = %s", (order_id,))
            conn.commit()
        first = await ws.recv_type("order")
    async with open_socket(server, alice) as ws:
        await ws.subscribe_orders(after=first["cursor"])
        rest = [await ws.recv_type("order") for _ in range(2)]
        assert [e["order"]["id"] for e in rest] == ids[1:]
        await ws.assert_silent()


async def test_a_transaction_split_by_the_disconnect_is_finished_first(server, make_user,
                                                                        db_url):
    """Y takes its xid first, X commits two events, the client sees one and leaves, then Y
    commits. The resume must give X's rest before Y, or Y's cursor would call X finished."""
    alice = make_user()
    with psycopg.connect(db_url) as x, psycopg.connect(db_url) as y:
        y.execute("SELECT pg_current_xact_id()")  # Y's xid is lower than X's
        async with open_socket(server, alice) as ws:
            await ws.subscribe_orders()
            for name in ("X1", "X2"):
                x.execute("INSERT INTO orders (owner_id, instrument, quantity, price)"
                          " VALUES (%s, %s, 1, 1)", (alice.id, name))
            x.commit()
            x1 = await ws.recv_type("order")
            assert x1["order"]["instrument"] == "X1"
        y.execute("INSERT INTO orders (owner_id, instrument, quantity, price)"
                  " VALUES (%s, 'Y1', 1, 1)", (alice.id,))
        y.commit()
    async with open_socket(server, alice) as ws:
        await ws.subscribe_orders(after=x1["cursor"])
        first = await ws.recv_type("order")
        assert first["order"]["instrument"] == "X2"
    async with open_socket(server, alice) as ws:  # left again after X2
        await ws.subscribe_orders(after=first["cursor"])
        assert (await ws.recv_type("order"))["order"]["instrument"] == "Y1"
        await ws.assert_silent()
