"""Pruning the change log past its retention (db/changelog.py `prune`): what the server's
upkeep does once a minute. A change's age is its `created_at` (its transaction's start);
changes of the past are made here by writing it back in time, so no test waits out a
retention. Each test has a database of its own: a prune deletes every test's old changes and
moves the horizon that expires their cursors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import asyncpg
import psycopg
import pytest

from db.changelog import ChangeLog, prune
from db.position import Position
from tests.conftest import insert_order
from tests.support.database import new_user, own_database

HOUR = 3600.0


@pytest.fixture
def url(server_url: str) -> Iterator[str]:
    with own_database(server_url, "prune") as url:
        yield url


@pytest.fixture
def sql(url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(url, autocommit=True) as conn:
        yield conn


@pytest.fixture
async def pool(url: str) -> AsyncIterator[asyncpg.Pool]:
    made = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        yield made
    finally:
        await made.close()


@pytest.fixture
async def changelog(url: str) -> AsyncIterator[ChangeLog]:
    log = ChangeLog(url)
    await log.open()
    try:
        yield log
    finally:
        await log.close()


def logged_xids(sql: psycopg.Connection, order_id: int) -> list[int]:
    return [row[0] for row in sql.execute(
        "SELECT xid::text::bigint FROM order_changes"
        " WHERE frame LIKE '%%\"order\" : {\"id\" : ' || %s || ',%%' ORDER BY seq",
        (order_id,))]


def pruned_xid(sql: psycopg.Connection) -> int:
    return sql.execute(
        "SELECT pruned_xid::text::bigint FROM order_changes_horizon").fetchone()[0]  # type: ignore[index]


def age(sql: psycopg.Connection, order_id: int, hours: float) -> None:
    """Make the order's changes `hours` old."""
    sql.execute("UPDATE order_changes SET created_at = now() - make_interval(secs => %s)"
                " WHERE frame LIKE '%%\"order\" : {\"id\" : ' || %s || ',%%'",
                (hours * HOUR, order_id))


async def cursor_past(changelog: ChangeLog, xid: int) -> Position:
    """A cursor taken once no transaction at or below `xid` is running. xids are the
    server's, not the database's: another database's transaction that got an older xid may
    still be open for a moment, and a cursor taken then would expire with the prune (it
    might have missed that transaction's changes) however young it is."""
    deadline = time.monotonic() + 10
    while True:
        state = await changelog.state()
        if not any(running <= xid for running in state.snapshot.xip):
            return state.start()
        assert time.monotonic() < deadline, f"a transaction below {xid} stayed open"
        await asyncio.sleep(0.01)


async def test_changes_older_than_the_retention_go_and_their_cursors_expire(
        url: str, sql: psycopg.Connection, pool: asyncpg.Pool, changelog: ChangeLog) -> None:
    owner = new_user(url).id
    before_old = (await changelog.state()).start()
    old = insert_order(sql, owner)
    sql.execute("UPDATE orders SET price = price + 1 WHERE id = %s", (old,))
    age(sql, old, 2)
    before_young = await cursor_past(changelog, max(logged_xids(sql, old)))
    young = insert_order(sql, owner)
    age(sql, young, 0.5)  # half the retention: not old enough
    old_xids, young_xids = logged_xids(sql, old), logged_xids(sql, young)
    assert len(old_xids) == 2 and len(young_xids) == 1

    assert await prune(pool, HOUR) == 2
    assert logged_xids(sql, old) == []
    assert logged_xids(sql, young) == young_xids
    assert pruned_xid(sql) == max(old_xids)

    # A cursor from before the pruned changes gets `resync`; one taken after them reads on.
    assert (await changelog.read(before_old)).expired
    page = await changelog.read(before_young)
    assert not page.expired
    assert [change.xid for change in page.changes] == young_xids

    # Nothing else is that old: the next pass deletes nothing and leaves the horizon.
    assert await prune(pool, HOUR) == 0
    assert pruned_xid(sql) == max(old_xids)


async def test_a_transaction_running_during_the_pass_loses_nothing(
        url: str, sql: psycopg.Connection, pool: asyncpg.Pool, changelog: ChangeLog) -> None:
    """With no retention at all, every finished transaction's changes go, but not those of
    one still open, even one older than a transaction pruned (the pass cannot see its
    changes); and a cursor taken while it was open does not skip it: it gets `resync`."""
    owner = new_user(url).id
    with psycopg.connect(url) as open_transaction:
        running = insert_order(open_transaction, owner)
        while_open = (await changelog.state()).start()
        finished = insert_order(sql, owner)
        (running_xid,) = logged_xids(open_transaction, running)
        (finished_xid,) = logged_xids(sql, finished)
        assert running_xid < finished_xid
        assert await prune(pool, 0) == 1
        open_transaction.commit()
    assert logged_xids(sql, finished) == []
    assert logged_xids(sql, running) == [running_xid]
    assert pruned_xid(sql) == finished_xid > running_xid
    assert (await changelog.read(while_open)).expired


async def test_one_pruner_at_a_time(url: str, sql: psycopg.Connection,
                                    pool: asyncpg.Pool) -> None:
    owner = new_user(url).id
    order = insert_order(sql, owner)
    with psycopg.connect(url) as other_pruner:
        other_pruner.execute("SELECT pg_advisory_xact_lock(7363, 1)")
        assert await prune(pool, 0) == 0
    assert len(logged_xids(sql, order)) == 1
    assert await prune(pool, 0) == 1
    assert logged_xids(sql, order) == []
