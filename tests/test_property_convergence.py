"""Property: whatever the history of writes, a client that follows the version rule
(tests/support/book.py, docs/protocol.md "Versions and tombstones") ends with exactly what
the database holds for its subscription, and is never told to resync.

Hypothesis draws, per example, 2-3 fresh users and a history written with psycopg as psql
would: transactions of inserts, updates (an oversized note now and then: announced by
reference), deletes and owner moves there and back, several per transaction, some rolled
back; statements of more than 100 rows (inserts, updates, moves, deletes: announced in bulk);
pairs of transactions that commit out of order (the one that took its xid first, with
`SELECT pg_current_xact_id()`, commits last, sometimes after changing the very orders the
other one changed); listener gaps (the server's LISTEN backend terminated mid-history); and
client resumes (a socket closed mid-history, frames in flight lost, then
`{"op":"subscribe","channel":"orders","after":<last cursor seen>}`), also while a
transaction holding an older xid is still open. The server runs on a database of its own
(terminating "the LISTEN backend of this database" must not hit other tests' servers) with
12 KiB session queues, so big statements and oversized events also overflow queues and
send sessions to the log.

Each user watches its own orders and one staff session watches "*", each subscribed with
or without `"batch": true`; every socket is read all along into a Book. At the end a marker
order per owner is committed and awaited (each session's stream ends with the markers of
its scope), then each Book must equal the rows of its scope, compared by id on every field
the frames carry (version included).

A run (250 examples, 34 s): 473 transactions committed and 165 rolled back; 102 pairs
committing out of xid order (37 of them where the later commit changed an order the earlier
one had changed); 2087 owner moves, 161 of them back to an earlier owner; 333 deleted
orders; 113 statements over 100 rows (94 inserts, 10 updates, 8 moves, 1 delete); 143
oversized events; 284 listener gaps (81 with a transaction open); 405 resumes (82 with a
transaction open); 138 queue overflows; 432 sessions in batches (959 batch frames);
32927 events heard, 17 of them ignored by the version rule; no resync. Runs vary (15-60 s):
PROPERTY_EXAMPLES sets the number of examples (1500 passed in 223 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import websockets
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from psycopg import sql as pgsql

from tests.conftest import TERMINATE_LISTENERS, ServerProcess, Socket, User, metrics, open_socket
from tests.support.book import Book
from tests.support.database import new_user, own_database

EXAMPLES = int(os.environ.get("PROPERTY_EXAMPLES", "250"))
QUANTITIES = ("1", "10", "2.5")
PRICES = ("0", "101.25", "7.125")
BIG_NOTE = "n" * 9000  # past NOTIFY's 8000 bytes: the server reads the frame from the log
# (column, new value): what an update may change. Columns come from this fixed list only.
CHANGES = (("price", "99.5"), ("price", "0"), ("quantity", "3"), ("status", "filled"),
           ("status", "cancelled"), ("side", "sell"), ("side", "buy"), ("note", "hello"))
QUEUE_BYTES = 12288
BULK = 100  # statements of more rows than this are announced in bulk (db/triggers.sql)
# Waiting for the markers (s): generous, a session far behind reads the log in small pages.
QUIESCE_TIMEOUT = 15.0

tally: Counter[str] = Counter()
BULK_KINDS = ("insert", "update", "move", "delete")
REPORT = ("examples", "transactions committed", "transactions rolled back",
          "pairs committing out of xid order",
          "pairs where the later commit changed an order the earlier one changed",
          "owner moves", "owner moves back to an earlier owner", "deleted orders",
          *(f"statements over {BULK} rows: bulk {kind}" for kind in BULK_KINDS),
          "oversized events", "listener gaps", "listener gaps with a transaction open",
          "resumes", "resumes with a transaction open", "queue overflows",
          "sessions in batches", "batch frames", "events heard",
          "events ignored by the version rule")

# What the frames carry, as the database holds it (timestamps formatted as the trigger does).
STATE_SQL = """
SELECT o.id, o.owner_id, u.username AS owner, o.instrument, o.side, o.quantity::text AS quantity,
       o.price::text AS price, o.status, o.note, o.version,
       to_char(o.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS created_at,
       to_char(o.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS updated_at
FROM orders o JOIN users u ON u.id = o.owner_id
WHERE o.owner_id = ANY(%s)
"""


# -- strategies ---------------------------------------------------------------------------

ref = st.integers(0, 40)  # picks one of the orders a transaction may touch, modulo their count
row_op = st.one_of(
    st.tuples(st.just("insert"), st.integers(0, 2), st.sampled_from(QUANTITIES),
              st.sampled_from(PRICES)),
    st.tuples(st.just("update"), ref, st.sampled_from(CHANGES)),
    # Oversized one at a time only (a hundred of them in one statement just makes runs slow).
    st.tuples(st.just("update"), ref, st.just(("note", BIG_NOTE))),
    st.tuples(st.just("move"), ref, st.integers(0, 1)),
    # An order this example moved before, back to the owner it had before that move.
    st.tuples(st.just("move back"), ref, st.integers(0, 1)),
    st.tuples(st.just("delete"), ref),
)
bulk_op = st.one_of(
    st.tuples(st.just("bulk insert"), st.integers(0, 2), st.integers(BULK + 1, BULK + 30)),
    st.tuples(st.just("bulk update"), st.sampled_from(CHANGES)),
    # Every order the transaction may touch, to the next owner (or the one after: k).
    st.tuples(st.just("bulk move"), st.integers(1, 2)),
    # Every order of one owner the transaction may touch (an end-of-day cancel).
    st.tuples(st.just("bulk delete"), st.integers(0, 2)),
)
# Mostly single rows; a statement of many rows one time in three (shrinking towards rows).
op = st.tuples(st.integers(0, 2), row_op, bulk_op).map(lambda c: c[2] if c[0] == 2 else c[1])
commit = st.sampled_from([True, True, True, False])
session_ref = st.integers(0, 3)
event = st.one_of(
    st.just(("gap",)),  # terminate the server's LISTEN backend
    st.tuples(st.just("close"), session_ref),
    st.tuples(st.just("resume"), session_ref),  # reopen a closed one, or close and reopen
)
step = st.one_of(
    st.tuples(st.just("txn"), st.lists(op, min_size=1, max_size=4), commit),
    # T1 takes its xid, writes (orders T2 leaves alone); T2 writes and ends; events happen
    # with T1 still open; T1 writes more (if `focus`, to what T2 changed) and ends last.
    st.tuples(st.just("pair"), st.lists(op, max_size=2),
              st.lists(op, min_size=1, max_size=3), commit,
              st.lists(event, max_size=2), st.lists(op, max_size=3), st.booleans(), commit),
    event,
)
# (users, whether each session subscribes with "batch": true, steps)
histories = st.tuples(st.integers(2, 3), st.lists(st.booleans(), min_size=4, max_size=4),
                      st.lists(step, min_size=1, max_size=8))


# -- the client side ----------------------------------------------------------------------


class Session:
    """One client: a Book fed by a socket read all along; closing it loses what is in
    flight, reopening resumes from the last cursor the Book saw."""

    def __init__(self, server: ServerProcess, user: User, owner: int | str,
                 batch: bool) -> None:
        self.server, self.user, self.owner, self.batch = server, user, owner, batch
        self.name = (f"{'staff' if user.is_staff else 'user'} {user.id} watching {owner}"
                     f"{' in batches' if batch else ''}")
        self.book = Book()
        self.frames: list[dict[str, Any]] = []  # everything received, for diagnostics
        self.unexpected: list[Any] = []
        self.heard = asyncio.Event()
        self.socket: Socket | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._reader: asyncio.Task[None] | None = None

    @property
    def is_open(self) -> bool:
        return self.socket is not None

    async def open(self) -> None:
        stack = contextlib.AsyncExitStack()
        self.socket = await stack.enter_async_context(open_socket(self.server, self.user))
        self._stack = stack
        wanted: dict[str, Any] = {} if self.owner == self.user.id else {"owner": self.owner}
        if self.batch:
            wanted["batch"] = True
        if self.book.cursor is not None:
            wanted["after"] = self.book.cursor
        subscribed = await self.socket.subscribe_orders(**wanted)
        self.frames.append(subscribed)
        self.book.apply(subscribed)
        self._reader = asyncio.create_task(self._read(self.socket))

    async def _read(self, socket: Socket) -> None:
        try:
            async for text in socket.conn:
                frame = json.loads(text)
                self.frames.extend(frame["events"] if frame.get("type") == "batch" else [frame])
                if frame.get("type") not in ("order", "batch"):
                    self.unexpected.append(frame)
                elif frame["type"] == "batch":
                    tally["batch frames"] += 1
                    if not self.batch:
                        self.unexpected.append("a batch frame, never asked for")
                self.book.apply(frame)
                self.heard.set()
        except websockets.ConnectionClosed as closed:
            self.unexpected.append(f"socket closed by the server: {closed}")
        else:
            self.unexpected.append("socket closed by the server")
        self.heard.set()

    async def close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        stack, self._stack, self.socket = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def wait_heard(self, ids: list[int], timeout: float) -> None:
        """Until the Book has heard of every order in `ids` (no sleeping: woken by frames)."""
        deadline = time.monotonic() + timeout
        while True:
            missing = [i for i in ids if self.book.version(i) is None]
            if not missing or self.unexpected:
                return
            self.heard.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.name}: markers {missing} never arrived "
                                     f"({len(self.frames)} frames received)")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.heard.wait(), remaining)


# -- the writer side ----------------------------------------------------------------------


class History:
    """Runs a drawn history against the database and the sessions, counting what it made."""

    def __init__(self, conns: tuple[psycopg.AsyncConnection, psycopg.AsyncConnection],
                 admin: psycopg.AsyncConnection, owners: list[int],
                 sessions: list[Session]) -> None:
        self.conns, self.admin, self.owners, self.sessions = conns, admin, owners, sessions
        self.open_xid = False  # a transaction holding an older xid is open (pair, T1)
        self.moved: dict[int, int] = {}  # order id -> its owner before its last move

    async def run(self, steps: list[Any]) -> None:
        for s in steps:
            if s[0] == "txn":
                _, ops, commit_it = s
                touched: set[int] = set()
                bulks = await self.write(self.conns[0], ops, None, touched)
                await self.end(self.conns[0], commit_it, bulks)
            elif s[0] == "pair":
                await self.pair(*s[1:])
            else:
                await self.event(s)

    async def pair(self, before: list[Any], t2_ops: list[Any], t2_commit: bool,
                   middle: list[Any], after: list[Any], focus: bool, t1_commit: bool) -> None:
        t1, t2 = self.conns
        await t1.execute("SELECT pg_current_xact_id()")  # T1's xid is older than T2's
        self.open_xid = True
        ids = [r[0] for r in await (await t1.execute(
            "SELECT id FROM orders WHERE owner_id = ANY(%s) ORDER BY id",
            (self.owners,))).fetchall()]
        # While both are open they touch different orders: neither waits for the other.
        mine, theirs = set(ids[0::2]), set(ids[1::2])
        t2_touched: set[int] = set()
        bulks = await self.write(t1, before, mine, set())
        t2_bulks = await self.write(t2, t2_ops, theirs, t2_touched)
        t2_done = await self.end(t2, t2_commit, t2_bulks)
        for e in middle:
            await self.event(e)
        targets = set(t2_touched) if focus and t2_done and t2_touched else None
        overlap: set[int] = set()
        bulks += await self.write(t1, after, targets, overlap)
        self.open_xid = False
        t1_done = await self.end(t1, t1_commit, bulks)
        if t1_done and t2_done:
            tally["pairs committing out of xid order"] += 1
            if overlap & t2_touched:
                tally["pairs where the later commit changed an order the earlier one changed"] += 1

    async def event(self, e: tuple[Any, ...]) -> None:
        if e[0] == "gap":
            killed = await (await self.admin.execute(TERMINATE_LISTENERS)).fetchall()
            if killed:
                tally["listener gaps"] += 1
                tally["listener gaps with a transaction open"] += self.open_xid
            return
        session = self.sessions[e[1] % len(self.sessions)]
        if e[0] == "close":
            await session.close()
            return
        if session.is_open:
            await session.close()  # reconnect at once: only what was in flight is missed
        await session.open()
        tally["resumes"] += 1
        tally["resumes with a transaction open"] += self.open_xid

    async def end(self, conn: psycopg.AsyncConnection, commit_it: bool,
                  bulks: list[str]) -> bool:
        if commit_it:
            await conn.commit()
            tally["transactions committed"] += 1
            tally.update(bulks)
        else:
            await conn.rollback()
            tally["transactions rolled back"] += 1
        return commit_it

    async def write(self, conn: psycopg.AsyncConnection, ops: list[Any],
                    allowed: set[int] | None, touched: set[int]) -> list[str]:
        """Run `ops` in `conn`'s transaction, on the orders in `allowed` (None: any of the
        example's) and those it inserts; returns the names of its statements over BULK rows."""
        bulks = []
        for o in ops:
            kind = o[0]
            rows = [tuple(r) for r in await (await conn.execute(
                "SELECT id, owner_id FROM orders WHERE owner_id = ANY(%s) ORDER BY id",
                (self.owners,))).fetchall()]
            if allowed is not None:
                rows = [r for r in rows if r[0] in allowed]
            ids = [r[0] for r in rows]
            if kind == "move back":
                back = [r for r in rows if r[0] in self.moved]
                if back:
                    rows = back
                else:
                    kind = "move"
            if kind in ("update", "move", "move back", "delete") and not rows:
                kind, o = "insert", ("insert", o[1], "1", "1")
            if kind == "insert":
                cur = await conn.execute(
                    "INSERT INTO orders (owner_id, instrument, quantity, price)"
                    " VALUES (%s, 'P', %s, %s) RETURNING id",
                    (self.owners[o[1] % len(self.owners)], o[2], o[3]))
            elif kind == "bulk insert":
                cur = await conn.execute(
                    "INSERT INTO orders (owner_id, instrument, quantity, price)"
                    " SELECT %s, 'B' || g, 1, g FROM generate_series(1, %s) g RETURNING id",
                    (self.owners[o[1] % len(self.owners)], o[2]))
            elif kind == "update":
                cur = await self._set(conn, o[2], [rows[o[1] % len(rows)][0]])
            elif kind == "bulk update":
                cur = await self._set(conn, o[1], ids)
            elif kind in ("move", "move back"):
                order_id, owner = rows[o[1] % len(rows)]
                to = self.moved.get(order_id) if kind == "move back" else None
                to = self._other(owner, o[2]) if to is None or to == owner else to
                cur = await conn.execute(
                    "UPDATE orders SET owner_id = %s WHERE id = %s RETURNING id", (to, order_id))
                self.moved[order_id] = owner
            elif kind == "bulk move":
                step = 1 + (o[1] - 1) % (len(self.owners) - 1)  # never 0: every order moves
                cur = await conn.execute(
                    "UPDATE orders SET owner_id ="
                    " (%(owners)s::bigint[])[(array_position(%(owners)s::bigint[], owner_id) - 1"
                    "  + %(step)s) %% %(n)s + 1]"
                    " WHERE id = ANY(%(ids)s) RETURNING id",
                    {"owners": self.owners, "step": step, "n": len(self.owners), "ids": ids})
            elif kind == "delete":
                cur = await conn.execute("DELETE FROM orders WHERE id = %s RETURNING id",
                                         (rows[o[1] % len(rows)][0],))
            else:  # bulk delete
                cur = await conn.execute(
                    "DELETE FROM orders WHERE id = ANY(%s) AND owner_id = %s RETURNING id",
                    (ids, self.owners[o[1] % len(self.owners)]))
            changed = [r[0] for r in await cur.fetchall()]
            touched.update(changed)
            if allowed is not None and kind.endswith("insert"):
                allowed.update(changed)
            if len(changed) > BULK:
                bulks.append(f"statements over {BULK} rows: {kind}")
        return bulks

    @staticmethod
    async def _set(conn: psycopg.AsyncConnection, change: tuple[str, str],
                   ids: list[int]) -> psycopg.AsyncCursor[Any]:
        column, value = change
        return await conn.execute(
            pgsql.SQL("UPDATE orders SET {} = %s WHERE id = ANY(%s) RETURNING id").format(
                pgsql.Identifier(column)), (value, ids))

    def _other(self, owner: int, pick: int) -> int:
        """Another of the example's owners than `owner`."""
        others = [u for u in self.owners if u != owner]
        return others[pick % len(others)]


# -- checking -----------------------------------------------------------------------------


async def count_history(admin: psycopg.AsyncConnection, owners: list[int]) -> None:
    """Count, from the change log, the committed moves (and moves back) and deletes."""
    cur = await admin.execute(
        "SELECT (frame::json #>> '{order,id}')::bigint, (frame::json #>> '{order,version}')::int,"
        " frame::json ->> 'op', owner_id, old_owner_id FROM order_changes"
        " WHERE owner_id = ANY(%s) ORDER BY 1, 2, seq", (owners,))
    owned: dict[int, set[int]] = {}
    for order_id, _version, op, owner, old_owner in await cur.fetchall():
        was = owned.setdefault(order_id, {owner})
        if old_owner is not None:
            tally["owner moves"] += 1
            tally["owner moves back to an earlier owner"] += owner in was
        if op == "delete":
            tally["deleted orders"] += 1
        was.add(owner)
    big = await admin.execute(
        "SELECT count(*) FROM order_changes WHERE owner_id = ANY(%s) AND length(frame) > 8000",
        (owners,))
    tally["oversized events"] += (await big.fetchone())[0]


# The examples run so far, described (the last two); and, once the server's listener is
# found gone for good, the one it died in: every later example fails at once with it.
examples_run: list[str] = []
listener_died_in: list[str] = []


async def assert_listening(admin: psycopg.AsyncConnection, before_example: bool,
                           timeout: float = 5.0) -> None:
    """The server has a LISTEN backend on this database (after a gap: again, within
    `timeout`)."""
    deadline = time.monotonic() + timeout
    while not listener_died_in:
        cur = await admin.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE application_name = 'orderstream-listener' AND datname = current_database()")
        if (await cur.fetchone())[0]:
            return
        if time.monotonic() > deadline:
            culprit = examples_run[:-1] if before_example else examples_run
            listener_died_in.append(culprit[-1] if culprit else "(none yet)")
            break
        await asyncio.sleep(0.05)  # polling the database: nothing to wait on instead
    raise AssertionError(
        "the server's listener died for good (no LISTEN connection, and none coming back:"
        " every stream stopped; see tests/test_listener_supervisor.py) during the example"
        f" {listener_died_in[0]}")


def describe(session: Session, order_id: int) -> list[Any]:
    """What the session heard of one order: (op, version, owner_id, cursor) in arrival order."""
    return [(f["op"], f["order"]["version"], f["order"]["owner_id"], f.get("cursor"))
            for f in session.frames
            if f.get("type") == "order" and f["order"]["id"] == order_id]


async def check_converged(admin: psycopg.AsyncConnection, session: Session,
                          owners: list[int]) -> None:
    scope = owners if session.owner == "*" else [session.owner]
    cur = await admin.execute(STATE_SQL, (scope,))
    names = [c.name for c in cur.description]
    want = {row[0]: dict(zip(names, row, strict=True)) for row in await cur.fetchall()}
    # A "*" session may have heard the tail of an earlier example: only this one's owners.
    got = {i: o for i, o in session.book.orders().items() if o["owner_id"] in owners}
    if got == want:
        return
    problems = []
    for order_id in sorted(set(got) | set(want)):
        if got.get(order_id) != want.get(order_id):
            problems.append(
                f"order {order_id}: database {_short(want.get(order_id))}, book "
                f"{_short(got.get(order_id))} (held {session.book.version(order_id)}); "
                f"heard {describe(session, order_id)}")
    raise AssertionError(f"{session.name} did not converge:\n  " + "\n  ".join(problems[:10]))


def _short(order: dict[str, Any] | None) -> Any:
    if order is None:
        return None
    return {k: (v if k != "note" or len(v) < 20 else f"<{len(v)} chars>")
            for k, v in order.items() if k not in ("created_at", "updated_at")}


# -- the test -----------------------------------------------------------------------------


async def check_example(server: ServerProcess, db_url: str, users: list[User], staff: User,
                        batches: list[bool], steps: list[Any]) -> None:
    owners = [u.id for u in users]
    sessions = [Session(server, u, u.id, batches[i]) for i, u in enumerate(users)]
    sessions.append(Session(server, staff, "*", batches[-1]))
    tally["sessions in batches"] += sum(s.batch for s in sessions)
    options = "-c lock_timeout=5000"  # a plan bug that made writers wait fails, never hangs
    async with await psycopg.AsyncConnection.connect(db_url, options=options) as t1, \
            await psycopg.AsyncConnection.connect(db_url, options=options) as t2, \
            await psycopg.AsyncConnection.connect(db_url, autocommit=True) as admin:
        try:
            await assert_listening(admin, before_example=True)
            for session in sessions:
                await session.open()
            await History((t1, t2), admin, owners, sessions).run(steps)
            for session in sessions:
                if not session.is_open:
                    await session.open()
                    tally["resumes"] += 1
            # Quiescence: one marker per owner, committed after everything else; each
            # session's stream ends with the markers of its scope.
            cur = await admin.execute(
                "INSERT INTO orders (owner_id, instrument, quantity, price)"
                " SELECT unnest(%s::bigint[]), 'MARK', 1, 1 RETURNING id, owner_id", (owners,))
            markers = {owner: order_id for order_id, owner in await cur.fetchall()}
            try:
                await asyncio.gather(*(
                    s.wait_heard(list(markers.values()) if s.owner == "*" else [markers[s.owner]],
                                 QUIESCE_TIMEOUT) for s in sessions))
            except AssertionError:
                await assert_listening(admin, before_example=False)  # the likelier cause
                raise
            for session in sessions:
                assert not session.unexpected, f"{session.name} got {session.unexpected}"
                assert not session.book.resyncs, f"{session.name} got {session.book.resyncs}"
                await check_converged(admin, session, owners)
            await count_history(admin, owners)
            tally["events heard"] += sum(s.book.events for s in sessions)
            tally["events ignored by the version rule"] += sum(s.book.ignored for s in sessions)
        finally:
            for session in sessions:
                await session.close()


@pytest.fixture(scope="module")
def convergence_db(server_url: str) -> Iterator[str]:
    # Its own database: the gaps terminate "the LISTEN backend of this database", which on
    # the run's shared database would hit every other server's listener too.
    with own_database(server_url, "convergence") as url:
        yield url


@pytest.fixture(scope="module")
def convergence_server(convergence_db: str,
                       tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # Small session queues (12 KiB): the pump publishes up to 32 changes before a sender can
    # run, so a big statement, or two oversized events, overflow one, and the session then
    # catches up from the log in pages of half that.
    proc = ServerProcess(convergence_db, tmp_path_factory.mktemp("convergence"),
                         extra_env={"ORDERSTREAM_SESSION_QUEUE_BYTES": str(QUEUE_BYTES)})
    proc.start()
    yield proc
    proc.stop()


@pytest.mark.slow
@pytest.mark.timeout(max(120, EXAMPLES * 3))
def test_clients_following_the_version_rule_converge(convergence_server, convergence_db) -> None:
    started = time.monotonic()
    staff = new_user(convergence_db, staff=True, prefix="staff")

    @given(history=histories)
    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    def check(history: tuple[int, list[bool], list[Any]]) -> None:
        n_users, batches, steps = history
        # Hypothesis's own print of the failing example comes out empty under this pytest.
        described = (f"{n_users} users, batches {batches}, steps:"
                     f" {repr(steps).replace(repr(BIG_NOTE), 'BIG_NOTE')}")
        note(described)
        examples_run[:] = [*examples_run[-1:], described]
        # Fresh users: their orders are this example's alone.
        users = [new_user(convergence_db) for _ in range(n_users)]
        asyncio.run(check_example(convergence_server, convergence_db, users, staff, batches,
                                  steps))
        tally["examples"] += 1

    check()
    server_side = asyncio.run(metrics(convergence_server))
    for name in ("listener_reconnects_total", "listener_replays_total", "catch_ups_total",
                 "catch_up_reads_total", "resyncs_sent_total"):
        tally[f"server {name}"] = int(server_side[f"orderstream_{name}"])
    # A session falls behind on a resume or when its queue would overflow.
    tally["queue overflows"] = tally["server catch_ups_total"] - tally["resumes"]
    print(f"\nproperty convergence ({time.monotonic() - started:.1f} s):")
    for name in (*REPORT, *sorted(set(tally) - set(REPORT))):
        print(f"  {name}: {tally[name]}")
