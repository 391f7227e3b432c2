"""The change log is UNLOGGED: a crash of PostgreSQL empties it. Nothing committed is lost
(the orders are logged), but a cursor from before the crash can no longer be replayed, so
its client must get `resync`, never a silent "nothing missed"; live sessions get `resync`
too, and everything afterwards flows as usual. A real crash: immediate shutdown of a
PostgreSQL of this module's own, then crash recovery on start."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from db.embedded import EmbeddedPostgres
from db.position import Position
from tests.conftest import User, insert_order, open_socket, running_server
from tests.support.database import new_user, own_postgres

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def crash_postgres() -> Iterator[tuple[EmbeddedPostgres, str]]:
    with own_postgres("crash") as server_and_url:
        yield server_and_url


@pytest.fixture(scope="module")
def crash_user(crash_postgres: tuple[EmbeddedPostgres, str]) -> User:
    return new_user(crash_postgres[1], prefix="crash")


def log_state(url: str, seq: int) -> tuple[bool, bool]:
    """(whether change `seq` is still in the log, whether the log's sentinel is there)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT EXISTS (SELECT FROM order_changes WHERE seq = %s),"
            " EXISTS (SELECT FROM order_changes_alive)", (seq,)).fetchone()
    assert row is not None
    return row[0], row[1]


def generation(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT generation FROM order_changes_horizon").fetchone()
    assert row is not None
    return row[0]


def write(url: str, user: User, instrument: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        return insert_order(conn, user.id, instrument)


async def test_crash_with_no_server_running_expires_older_cursors(
        crash_postgres: tuple[EmbeddedPostgres, str], crash_user: User,
        tmp_path: Path) -> None:
    postgres, url = crash_postgres
    with running_server(url, tmp_path) as server:
        async with open_socket(server, crash_user) as ws:
            await ws.subscribe_orders()
            write(url, crash_user, "SEEN")
            seen = await ws.recv_type("order")
        missed = write(url, crash_user, "MISSED")  # after the cursor, before the crash
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT max(seq) FROM order_changes").fetchone()
        assert row is not None
        missed_seq = row[0]
    assert log_state(url, missed_seq) == (True, True)

    postgres.crash()
    # The crash did empty the log, sentinel included (nobody has recovered it yet), and lost
    # no order.
    assert log_state(url, missed_seq) == (False, False)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM orders WHERE id = %s",
                            (missed,)).fetchone() == (1,)

    with running_server(url, tmp_path) as server:  # its listener recovers the log on connecting
        assert log_state(url, missed_seq)[1], "the server did not put the sentinel back"
        async with open_socket(server, crash_user) as ws:
            await ws.subscribe_orders(after=seen["cursor"])
            resync = await ws.recv_type("resync")
            assert resync["reason"] == "cursor expired"
            live = write(url, crash_user, "AFTER-CRASH")
            event = await ws.recv_type("order")
            assert event["order"]["id"] == live
            latest = event["cursor"]
        # The recovery drew a new generation of the log, and cursors carry it.
        assert Position.parse(latest).generation == generation(url)
        assert generation(url) not in (0, Position.parse(seen["cursor"]).generation)
        # A cursor from after the recovery resumes as usual, without resync.
        gap = write(url, crash_user, "GAP")
        async with open_socket(server, crash_user) as ws:
            await ws.subscribe_orders(after=latest)
            assert (await ws.recv_type("order"))["order"]["id"] == gap
            await ws.assert_silent()


async def test_crash_under_a_running_server_resyncs_live_sessions(
        crash_postgres: tuple[EmbeddedPostgres, str], crash_user: User,
        tmp_path: Path) -> None:
    postgres, url = crash_postgres
    with running_server(url, tmp_path) as server:
        async with open_socket(server, crash_user) as live, \
                open_socket(server, crash_user) as gone:
            await live.subscribe_orders()
            await gone.subscribe_orders()
            write(url, crash_user, "BEFORE")
            await live.recv_type("order")
            seen = await gone.recv_type("order")
            await gone.conn.close()
            write(url, crash_user, "MISSED")
            await live.recv_type("order")

            postgres.crash()
            # The listener hears the connection die, reconnects, recovers the emptied log,
            # and its catch-up finds the gap older than the log: every session reloads.
            resync = await live.recv_type("resync", timeout=20)
            assert resync["reason"] == "cursor expired"
            after = write(url, crash_user, "AFTER")
            event = await live.recv_type("order", timeout=10)
            assert event["order"]["id"] == after
            # The live session's cursors are of the generation its server recovered.
            assert Position.parse(event["cursor"]).generation == generation(url)
            assert generation(url) != Position.parse(seen["cursor"]).generation

        async with open_socket(server, crash_user) as ws:
            await ws.subscribe_orders(after=seen["cursor"])
            assert (await ws.recv_type("resync"))["reason"] == "cursor expired"
        async with open_socket(server, crash_user) as ws:
            await ws.subscribe_orders()
            fresh = write(url, crash_user, "FRESH")
            assert (await ws.recv_type("order"))["order"]["id"] == fresh
