"""Per-subscriber memory is bounded in bytes, whatever the gap: sockets that resume over a
50 MB gap and do not read, and a live socket that stops reading while a 100,000-row
statement streams past, cost the server about their byte budget each, not the gap; and
what they missed is all there once they read."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import websockets

from config import load_settings
from tests.conftest import ServerProcess, insert_order, metrics, open_socket
from tests.support.raw_ws import RawClient
from tests.support.rss import RssSampler

pytestmark = pytest.mark.slow

MB = 2**20
# The gap: INSERT statements of this many rows (more than 100: announced in bulk, read from
# the log by the listener), notes of these sizes in turn (bytes; 10 KB on average, from
# inline-sized to well past NOTIFY's 8000 bytes).
GAP_STATEMENTS, GAP_ROWS = 5, 1000
NOTE_SIZES = (300, 4000, 9000, 15000, 21700)
# Then small UPDATE statements (one notification per row, the oversized ones by reference).
SMALL_UPDATES, SMALL_UPDATE_ROWS = 10, 50
STUCK_SOCKETS = 6
SIT_SECONDS = 5.0
SAMPLE_SECONDS = 0.05
# The byte budget of each socket's queue, as the server reads it (settings.toml
# session_queue_bytes, 1 MiB, or ORDERSTREAM_SESSION_QUEUE_BYTES: the server inherits
# this process's environment).
BUDGET = load_settings().session_queue_bytes
# What one socket that does not read may cost the server, by design:
# - its queue: at most BUDGET (a catch-up reads only while at most half of it is queued,
#   and a page stops once past BUDGET/2 bytes, overshooting by one row of ~22 KB);
# - the page being read: BUDGET/2 of changes, and while asyncpg fills it its cursor
#   prefetch of 64 rows (~1.4 MB of 22 KB rows);
# - the transport's write buffer and asyncpg's read buffer (tens of KB).
# The kernel's socket buffers (several MB on loopback) are not the process's memory.
# So 2 x BUDGET + 2 MiB each, and 6 MiB for all: the allocator's slack and the log-read
# pool's connections, opened on first use. With the 1 MiB default: 30 MiB for six sockets
# (measured: 9 to 17 MiB), while one socket holding its 57 MB gap would pass it alone.
PER_SOCKET_BOUND_MB = 2 * BUDGET / MB + 2
RESUME_RSS_BOUND_MB = STUCK_SOCKETS * PER_SOCKET_BOUND_MB + 6

# The big statement: rows, and the note it writes into each (bytes), so its frames come to
# about 80 MB, 80 times the stuck socket's budget.
BIG_ROWS = 100_000
BIG_NOTE = 400
# Two sockets at most as above (the stuck one, and the staff reader, which may fall behind
# too and read the log), the page the listener reads a bulk statement in (4 MiB) and the
# same slack: 18 MiB with the default budget (measured: 3 to 7 MiB), far below the 80 MB
# that went past.
BIG_RSS_BOUND_MB = 2 * PER_SOCKET_BOUND_MB + 4 + 6


def write_gap(sql, owner_id: int, other_id: int) -> None:
    """About 55 MB of changes for `owner_id` in statements big and small, and some for
    `other_id` in between (which `owner_id`'s sockets must not get)."""
    sizes = "ARRAY[" + ",".join(str(s) for s in NOTE_SIZES) + "]"
    insert = ("INSERT INTO orders (owner_id, instrument, quantity, price, note)"
              " SELECT %s, 'GAP' || g, 1 + g %% 7, 100 + g %% 13,"
              f"  repeat(md5(g::text), ({sizes})[1 + g %% {len(NOTE_SIZES)}] / 32)"
              " FROM generate_series(%s::int, %s::int) g")
    for i in range(GAP_STATEMENTS):
        sql.execute(insert, (owner_id, i * GAP_ROWS, (i + 1) * GAP_ROWS - 1))
        if i == 2:
            sql.execute(insert, (other_id, 0, 199))
    ids = [r[0] for r in sql.execute(
        "SELECT id FROM orders WHERE owner_id = %s AND instrument LIKE 'GAP%%' ORDER BY id",
        (owner_id,)).fetchall()]
    for i in range(SMALL_UPDATES):
        chunk = ids[i * 97 % len(ids):][:SMALL_UPDATE_ROWS]
        sql.execute("UPDATE orders SET price = price + 1 WHERE id = ANY(%s)", (chunk,))
    sql.execute("DELETE FROM orders WHERE id = ANY(%s)", (ids[-10:],))


def write_while_stuck(sql, owner_id: int) -> None:
    """Changes committed while the resumed sockets sit: small ones the hub holds for them
    while they are behind, and a statement past what it holds (read from the log)."""
    for i in range(3):
        insert_order(sql, owner_id, f"LIVE{i}")
    sql.execute("INSERT INTO orders (owner_id, instrument, quantity, price, note)"
                " SELECT %s, 'LIVEBULK' || g, 1, 1, repeat('b', 10000)"
                " FROM generate_series(1, 1000) g", (owner_id,))
    sql.execute("UPDATE orders SET note = repeat('r', 20000)"
                " WHERE id = (SELECT min(id) FROM orders WHERE owner_id = %s"
                " AND instrument = 'LIVE0')", (owner_id,))


def changes_of(sql, owner_id: int, after_seq: int) -> list[int]:
    """The seqs of the owner's changes after `after_seq`, in commit order (one writer
    here: xid order is commit order)."""
    return [r[0] for r in sql.execute(
        "SELECT seq FROM order_changes WHERE (owner_id = %s OR old_owner_id = %s) AND seq > %s"
        " ORDER BY xid, seq", (owner_id, owner_id, after_seq)).fetchall()]


async def until_listener_passed(server: ServerProcess, user, sql) -> None:
    """Until the server's listener has published everything committed so far: a change
    committed now reaches a live subscriber only after all of those."""
    async with open_socket(server, user) as ws:
        await ws.subscribe_orders()
        order_id = insert_order(sql, user.id, "SENTINEL")
        while (await ws.recv(30))["order"]["id"] != order_id:
            pass


async def test_resumed_sockets_that_do_not_read_hold_their_budget_not_the_gap(
        own_server, make_user, sql):
    alice, bob = make_user(), make_user()
    async with open_socket(own_server, alice) as ws:
        await ws.subscribe_orders()
        insert_order(sql, alice.id, "SEEN")
        cursor = (await ws.recv_type("order"))["cursor"]
    (last_seen,) = sql.execute("SELECT max(seq) FROM order_changes").fetchone()

    started = time.perf_counter()
    write_gap(sql, alice.id, bob.id)
    wrote = time.perf_counter() - started
    gap = changes_of(sql, alice.id, last_seen)
    gap_bytes, biggest = sql.execute(
        "SELECT sum(octet_length(frame)), max(octet_length(frame)) FROM order_changes"
        " WHERE owner_id = %s AND seq > %s", (alice.id, last_seen)).fetchone()
    assert gap_bytes > 50 * 10**6

    # A fresh process, so the baseline holds no freed memory from the listener's reading
    # of the gap that the catch-ups could reuse unseen; the cursor is a position in the
    # log, not in one process.
    own_server.stop()
    own_server.start()
    await until_listener_passed(own_server, bob, sql)
    before = await metrics(own_server)
    rss = RssSampler(own_server.process.pid, SAMPLE_SECONDS)

    stuck = [RawClient(own_server, alice.token) for _ in range(STUCK_SOCKETS)]
    try:
        for client in stuck:
            client.send_json({"op": "subscribe", "channel": "orders", "after": cursor})
        # Each one's catch-up has begun (it starts as `subscribed` is queued), so the sit
        # below is theirs; then they read nothing more.
        for client in stuck:
            first = json.loads(await asyncio.wait_for(asyncio.to_thread(client.recv_text), 30))
            assert first["type"] == "subscribed", first
        await asyncio.sleep(SIT_SECONDS / 2)
        await asyncio.to_thread(write_while_stuck, sql, alice.id)
        await asyncio.sleep(SIT_SECONDS / 2)
        await rss.stop()
        sitting = await metrics(own_server)

        catch_ups = sitting["orderstream_catch_ups_total"] - before["orderstream_catch_ups_total"]
        reads = (sitting["orderstream_catch_up_reads_total"]
                 - before["orderstream_catch_up_reads_total"])
        pages_in_gap = gap_bytes / (BUDGET / 2)
        print(f"\ngap: {len(gap)} changes, {gap_bytes / 10**6:.1f} MB (largest frame "
              f"{biggest} B), written in {wrote:.1f} s; {STUCK_SOCKETS} resumed sockets that "
              f"do not read, for {SIT_SECONDS:g} s (10 MB more written meanwhile): "
              f"{rss.summary()}, {rss.growth_mb / STUCK_SOCKETS:.1f} MB per socket (bound "
              f"{RESUME_RSS_BOUND_MB:.0f} MB for all); {catch_ups:.0f} catch-ups, {reads:.0f} "
              f"log pages read (the gap is ~{pages_in_gap:.0f} pages a socket)")
        assert catch_ups == STUCK_SOCKETS
        assert rss.growth_mb < RESUME_RSS_BOUND_MB
        # Reads wait for the socket to drain: a few pages each (its queue and the kernel's
        # buffers), not the whole gap.
        assert reads < STUCK_SOCKETS * pages_in_gap / 4

        # One of them starts reading: it gets every change it missed once, in commit order,
        # then live ones.
        missed = changes_of(sql, alice.id, last_seen)
        started = time.perf_counter()
        seqs = await asyncio.to_thread(read_seqs, stuck[0], len(missed))
        print(f"a stuck socket that starts reading: {len(seqs)} changes in "
              f"{time.perf_counter() - started:.1f} s")
        assert seqs == missed
        insert_order(sql, alice.id, "AFTER")
        assert await asyncio.to_thread(read_seqs, stuck[0], 1) == changes_of(
            sql, alice.id, missed[-1])
    finally:
        for client in stuck:
            client.close()

    # And a library client resuming from the same cursor, after them.
    missed = changes_of(sql, alice.id, last_seen)
    started = time.perf_counter()
    book: dict[int, tuple[str, int]] = {}
    async with websockets.connect(own_server.ws_url, additional_headers=alice.auth,
                                  max_size=2**22) as conn:
        await conn.send(json.dumps({"op": "subscribe", "channel": "orders", "after": cursor}))
        assert json.loads(await conn.recv())["type"] == "subscribed"
        seqs = []
        while len(seqs) < len(missed):
            frame = json.loads(await asyncio.wait_for(conn.recv(), 30))
            assert frame["type"] == "order", f"expected an order event, got {frame!r}"
            seqs.append(frame["seq"])
            order = frame["order"]
            book[order["id"]] = (frame["op"], order["version"])
        elapsed = time.perf_counter() - started
        try:
            extra = await asyncio.wait_for(conn.recv(), 0.5)
        except TimeoutError:
            extra = None
        assert extra is None, f"more than it missed: {extra[:200]!r}"
        live_id = insert_order(sql, alice.id, "LIVE-AGAIN")
        live = json.loads(await asyncio.wait_for(conn.recv(), 5))
        assert (live["type"], live["order"]["id"]) == ("order", live_id)
    print(f"a websockets client resuming from the same cursor: {len(seqs)} changes in "
          f"{elapsed:.1f} s")
    assert seqs == missed
    # Every order it missed, with its final version (deleted ones as deletes).
    final = dict(sql.execute("SELECT id, version FROM orders WHERE owner_id = %s"
                             " AND id <> %s AND instrument <> 'SEEN'",
                             (alice.id, live_id)).fetchall())
    assert {i: v for i, (op, v) in book.items() if op != "delete"} == final
    assert sum(op == "delete" for op, _ in book.values()) == 10
    assert (await metrics(own_server))["orderstream_resyncs_sent_total"] == 0


def read_seqs(client: RawClient, count: int) -> list[int]:
    """The seqs of the next `count` order events."""
    seqs = []
    while len(seqs) < count:
        frame = json.loads(client.recv_text())
        assert frame["type"] == "order", f"expected an order event, got {str(frame)[:200]}"
        seqs.append(frame["seq"])
    return seqs


def read_orders(client: RawClient, count: int) -> dict[int, int]:
    """The next `count` order events, as {order id: version}, each order once."""
    versions: dict[int, int] = {}
    for _ in range(count):
        text = client.recv_text()
        frame = json.loads(text)
        assert frame["type"] == "order", f"expected an order event, got {text[:200]}"
        order = frame["order"]
        assert order["id"] not in versions, f"order {order['id']} twice"
        versions[order["id"]] = order["version"]
    return versions


async def test_live_socket_that_stops_reading_during_a_big_statement(own_server, make_user,
                                                                     sql):
    alice, staff, bob = make_user(), make_user(staff=True), make_user()
    sql.execute("INSERT INTO orders (owner_id, instrument, quantity, price)"
                " SELECT %s, 'BIG' || g, 1, 1 FROM generate_series(1, %s) g",
                (alice.id, BIG_ROWS))
    await until_listener_passed(own_server, bob, sql)

    stuck = RawClient(own_server, alice.token)
    try:
        stuck.send_json({"op": "subscribe", "channel": "orders"})
        assert json.loads(await asyncio.to_thread(stuck.recv_text))["type"] == "subscribed"
        # From here on it reads nothing.
        async with websockets.connect(own_server.ws_url, additional_headers=staff.auth,
                                      max_size=2**22) as conn:
            await conn.send(json.dumps({"op": "subscribe", "channel": "orders", "owner": "*"}))
            assert json.loads(await conn.recv())["type"] == "subscribed"
            before = await metrics(own_server)
            rss = RssSampler(own_server.process.pid, SAMPLE_SECONDS)
            started = time.perf_counter()
            await asyncio.to_thread(
                sql.execute, "UPDATE orders SET status = 'cancelled', note = repeat('n', %s)"
                " WHERE owner_id = %s", (BIG_NOTE, alice.id))
            committed = time.perf_counter()
            ids: set[int] = set()
            stream_bytes = 0
            while len(ids) < BIG_ROWS:
                text = await asyncio.wait_for(conn.recv(), 30)
                frame = json.loads(text)
                assert frame["type"] == "order", f"expected an order event, got {text[:200]}"
                order = frame["order"]
                assert order["owner_id"] == alice.id and order["version"] == 2, text[:200]
                assert order["id"] not in ids, f"order {order['id']} twice"
                ids.add(order["id"])
                stream_bytes += len(text)
            delivered = time.perf_counter()
            await asyncio.sleep(1.0)  # the stuck socket sits a while longer
            await rss.stop()
            after = await metrics(own_server)
        # Now it reads: all of the statement, each order once (from its queue, then the log).
        reading = time.perf_counter()
        late = await asyncio.to_thread(read_orders, stuck, BIG_ROWS)
        drained = time.perf_counter() - reading
    finally:
        stuck.close()
    assert sorted(late) == sorted(ids)
    assert set(late.values()) == {2}

    catch_ups = after["orderstream_catch_ups_total"] - before["orderstream_catch_ups_total"]
    print(f"\n{BIG_ROWS}-row UPDATE ({stream_bytes / 10**6:.0f} MB of frames): committed in "
          f"{committed - started:.2f} s, all of it at the staff '*' reader "
          f"{delivered - committed:.2f} s after commit; beside a live socket that stopped "
          f"reading: {rss.summary()} (bound {BIG_RSS_BOUND_MB:.0f} MB); {catch_ups:.0f} catch-ups; "
          f"the stuck socket then read all of it in {drained:.1f} s")
    assert after["orderstream_resyncs_sent_total"] == 0
    assert catch_ups >= 1  # the stuck socket fell behind instead of queueing it all
    assert rss.growth_mb < BIG_RSS_BOUND_MB
