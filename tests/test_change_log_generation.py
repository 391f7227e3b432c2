"""The change log's generation. The log is UNLOGGED: a crash, a promoted standby or a
restored base backup starts it empty, and may also have lost transactions whose xids the
database then hands out again. Moving the horizon past the recovering transaction expires
the cursors below it, but a client of the lost primary may hold a cursor naming xids above
it: once the database's xids pass those, its holder would silently miss the changes that
reuse them. The recovery draws a new generation, every cursor carries its own, and a
cursor of another generation gets `resync`, whatever its xids.

A loss here is what a crash leaves: the log and its sentinel emptied (as superuser) and the
server's connections dropped (its listener's; `hang_up=False` keeps them, for the server's
own check), on a database of this module's own, since it expires every cursor in it.

Last, a log that cannot be read at all (renamed away: what a revoked grant or a broken
schema does): events are heard but wait, and /healthz says so until the read succeeds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import psycopg
import pytest

from db.changelog import ChangeLog
from db.position import Position
from tests.conftest import (
    ServerProcess,
    User,
    insert_order,
    open_socket,
    running_server,
    terminate_listeners,
)
from tests.support.database import new_user, own_database


@pytest.fixture(scope="module")
def url(server_url: str) -> Iterator[str]:
    with own_database(server_url, "generation") as url:
        yield url


@pytest.fixture(scope="module")
def gen_server(url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(url, tmp_path_factory.mktemp("generation")) as proc:
        yield proc


@pytest.fixture
def sql(url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(url, autocommit=True) as conn:
        yield conn


def horizon(sql: psycopg.Connection) -> tuple[int, int]:
    """(pruned_xid, generation) of the change log."""
    row = sql.execute("SELECT pruned_xid::text::bigint, generation FROM order_changes_horizon"
                      ).fetchone()
    assert row is not None
    return row[0], row[1]


def empty_the_log(sql: psycopg.Connection, hang_up: bool) -> None:
    sql.execute("DELETE FROM order_changes_alive")
    sql.execute("TRUNCATE order_changes")
    if hang_up:
        terminate_listeners(sql)


async def lose_the_log(server: ServerProcess, sql: psycopg.Connection, user: User,
                       hang_up: bool = True) -> tuple[int, int]:
    """Lose the log under the running server; returns the horizon (pruned_xid, generation)
    once the server has recovered it and told its live sessions (resync): from then on its
    stream is of the new generation."""
    async with open_socket(server, user) as live:
        await live.subscribe_orders()
        empty_the_log(sql, hang_up)
        resync = await live.recv_type("resync", timeout=15)
        assert resync["reason"] == "cursor expired"
    return horizon(sql)


def insert_with_xid(sql: psycopg.Connection, owner_id: int, instrument: str) -> int:
    row = sql.execute("INSERT INTO orders (owner_id, instrument, quantity, price)"
                      " VALUES (%s, %s, 1, 1) RETURNING pg_current_xact_id()::text::bigint",
                      (owner_id, instrument)).fetchone()
    assert row is not None
    return row[0]


def pass_xid(sql: psycopg.Connection, xid: int) -> None:
    """Transactions until the database has handed out `xid` (one xid each: autocommit)."""
    while sql.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()[0] <= xid:
        pass


async def test_a_cursor_from_before_a_loss_is_expired_even_once_xids_pass_it(
        gen_server: ServerProcess, sql: psycopg.Connection, url: str) -> None:
    user = new_user(url)
    async with open_socket(gen_server, user) as ws:
        await ws.subscribe_orders()
        insert_order(sql, user.id, "SEEN")
        seen = Position.parse((await ws.recv_type("order"))["cursor"])
    # What a client of the lost primary holds: the cursor of 200 transactions later, xids
    # this database has yet to hand out (they never reached the standby promoted in its
    # place, or a crash lost them with synchronous_commit = off).
    lost = Position(seen.xmax + 200, generation=seen.generation)

    pruned, generation = await lose_the_log(gen_server, sql, user)
    assert generation not in (0, seen.generation)
    assert lost.xmax > pruned, "the horizon alone expires it: not the case under test"
    # Changes under xids the lost cursor names as seen: replayed from it, they would be
    # skipped without a word.
    reused = [insert_with_xid(sql, user.id, f"REUSED{i}") for i in range(3)]
    assert all(pruned < xid < lost.xmax for xid in reused)
    pass_xid(sql, lost.xmax)
    insert_order(sql, user.id, "PAST")

    async with open_socket(gen_server, user) as ws:
        await ws.subscribe_orders(after=lost.cursor())
        frame = await ws.recv()
        assert frame == {"type": "resync", "reason": "cursor expired"}, (
            f"{lost.cursor()} resumed without resync, skipping the changes of xids {reused}:"
            f" {frame}")
        live = insert_order(sql, user.id, "LIVE")
        event = await ws.recv_type("order")
        assert event["order"]["id"] == live
        assert Position.parse(event["cursor"]).generation == generation
        await ws.assert_silent()


async def test_a_cursor_past_the_database_gets_resync_then_every_live_event(
        gen_server: ServerProcess, sql: psycopg.Connection, url: str) -> None:
    """Of this generation, but past every xid the database has handed out (a lost primary's
    from before generations, another database's): resync, and the session starts again
    from the database's snapshot, skipping nothing under the xids the cursor named."""
    user = new_user(url)
    now = sql.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()[0]
    lost = Position(now + 1000, generation=horizon(sql)[1])
    async with open_socket(gen_server, user) as ws:
        await ws.subscribe_orders(after=lost.cursor())
        assert (await ws.recv_type("resync"))["reason"] == "cursor expired"
        live = [insert_order(sql, user.id, f"LIVE{i}") for i in range(3)]
        assert [(await ws.recv_type("order"))["order"]["id"] for _ in live] == live


async def test_a_cursor_from_after_the_recovery_resumes_as_usual(
        gen_server: ServerProcess, sql: psycopg.Connection, url: str) -> None:
    user = new_user(url)
    _, generation = await lose_the_log(gen_server, sql, user)
    async with open_socket(gen_server, user) as ws:
        subscribed = await ws.subscribe_orders()
        first = insert_order(sql, user.id, "FIRST")
        event = await ws.recv_type("order")
        assert event["order"]["id"] == first
    assert Position.parse(subscribed["cursor"]).generation == generation
    assert Position.parse(event["cursor"]).generation == generation
    missed = [insert_order(sql, user.id, f"MISSED{i}") for i in range(3)]

    async with open_socket(gen_server, user) as ws:
        await ws.subscribe_orders(after=event["cursor"])
        assert [(await ws.recv_type("order"))["order"]["id"] for _ in missed] == missed
        await ws.assert_silent()
    async with open_socket(gen_server, user) as ws:
        await ws.subscribe_orders(after=subscribed["cursor"])
        replayed = [(await ws.recv_type("order"))["order"]["id"] for _ in range(4)]
        assert replayed == [first, *missed]
        await ws.assert_silent()


async def test_a_loss_the_listener_did_not_hear_is_noticed_by_its_position_check(
        gen_server: ServerProcess, sql: psycopg.Connection, url: str) -> None:
    """The log emptied while the listener's connection stays up (no gap to catch up on):
    its check of the position (every second) sees the sentinel gone, recovers the log and
    resyncs; its cursors are then of the new generation, not of one every read refuses."""
    user = new_user(url)
    before = horizon(sql)[1]
    _, generation = await lose_the_log(gen_server, sql, user, hang_up=False)
    assert generation != before
    async with open_socket(gen_server, user) as ws:
        await ws.subscribe_orders()
        insert_order(sql, user.id, "SEEN")
        cursor = (await ws.recv_type("order"))["cursor"]
    assert Position.parse(cursor).generation == generation
    missed = insert_order(sql, user.id, "MISSED")
    async with open_socket(gen_server, user) as ws:
        await ws.subscribe_orders(after=cursor)
        assert (await ws.recv_type("order"))["order"]["id"] == missed
        await ws.assert_silent()


# -- the log's own reads, without a server (a database of their own: none recovers it) ---


async def test_reads_expire_every_position_of_another_generation(server_url: str) -> None:
    with own_database(server_url, "generation_reads") as url, \
            psycopg.connect(url, autocommit=True) as sql:
        log = ChangeLog(url)
        await log.open()
        try:
            before = await log.state()
            assert before.alive and before.generation == 0  # never lost yet
            position = before.start()
            assert not (await log.read(position)).expired

            empty_the_log(sql, hang_up=False)
            assert not (await log.state()).alive
            assert (await log.read(position)).expired  # until someone recovers it
            assert await log.recover() is True
            assert await log.recover() is False  # once
            after = await log.state()
            assert after.alive and after.generation not in (0, before.generation)
            assert 0 < after.generation < 2**62

            page = await log.read(position)
            assert page.expired and page.generation == after.generation
            restarted = page.end(position)
            assert restarted.generation == after.generation
            assert not (await log.read(restarted)).expired

            # A generation this database never had (another database's, made up): expired.
            stranger = Position(restarted.xmax, generation=after.generation ^ 1)
            assert (await log.read(stranger)).expired

            # Each loss draws another.
            empty_the_log(sql, hang_up=False)
            assert await log.recover() is True
            assert (await log.state()).generation not in (0, before.generation,
                                                          after.generation)
            assert (await log.read(restarted)).expired
        finally:
            await log.close()


# -- a log that cannot be read ----------------------------------------------------------


async def health_until(http: httpx.AsyncClient, status: int, says: str = "",
                       timeout: float = 15.0) -> httpx.Response:
    """Until /healthz answers `status` with `says` in its body (the reconnect itself is a
    503 of its own first)."""
    deadline = time.monotonic() + timeout
    while True:
        response = await http.get("/healthz")
        if response.status_code == status and says in response.text:
            return response
        assert time.monotonic() < deadline, (response.status_code, response.text)
        await asyncio.sleep(0.05)


async def test_healthz_is_503_while_the_change_log_cannot_be_read(
        gen_server: ServerProcess, sql: psycopg.Connection, url: str) -> None:
    user = new_user(url)
    async with httpx.AsyncClient(base_url=gen_server.base_url, timeout=10) as http, \
            open_socket(gen_server, user) as ws:
        await ws.subscribe_orders()
        assert (await http.get("/healthz")).status_code == 200
        before = insert_order(sql, user.id, "BEFORE")
        assert (await ws.recv_type("order"))["order"]["id"] == before

        sql.execute("ALTER TABLE order_changes RENAME TO order_changes_away")
        try:
            # A gap: the listener reconnects, LISTENs again, and must read the log.
            terminate_listeners(sql)
            refused = await health_until(http, 503, "cannot read the change log")
            body = refused.json()
            assert body["status"] == "unhealthy" and body["listener"] is False, body
            assert body["database"] is True, body
            assert body["error"]["code"] == "unavailable", body
            assert "cannot read the change log" in body["error"]["message"], body
            assert "order_changes" not in refused.text  # the details go to the log only
            assert refused.headers.get("retry-after")
        finally:
            sql.execute("ALTER TABLE order_changes_away RENAME TO order_changes")

        healthy = await health_until(http, 200)
        assert healthy.json() == {"status": "ok", "database": True, "listener": True}
        after = insert_order(sql, user.id, "AFTER")
        got = await ws.recv_type("order", timeout=10)
        assert got["order"]["id"] == after
