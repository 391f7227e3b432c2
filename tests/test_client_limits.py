"""The Python client (orderstream_client) at the edges: an order of any size arrives (a 5 MB
note once put it in a reconnect loop that never ended), a first connect while the server
cannot serve the stream raises the documented StreamUnavailable, and a connection that fails
right after subscribing, every time, backs off instead of hammering the server.

They put a 5 MB order in the change log, close the database to connections and rename the
change log away: things no other test's server should meet, so they get a database, and a
server, of their own."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import orderstream_client
from orderstream_client import StreamUnavailable
from orderstream_client.stream import SERVER_LISTENER_WAIT
from tests.conftest import ServerProcess, healthz_until, insert_order, terminate_listeners
from tests.support.database import allow_connections, new_user, own_database
from tests.test_client import assert_silent, next_event
from web.ws import LISTENER_WAIT_SECONDS

# Characters of the big order's note: past the 4 MiB frames the client once took at most.
BIG_NOTE = 5_000_000


@pytest.fixture(scope="module")
def limits_url(server_url: str) -> Iterator[str]:
    with own_database(server_url, "client_limits") as url:
        yield url


@pytest.fixture(scope="module")
def limits_server(limits_url: str, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[ServerProcess]:
    proc = ServerProcess(limits_url, tmp_path_factory.mktemp("client_limits"))
    proc.start()
    yield proc
    proc.stop()


def without_cursor(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k != "cursor"}


@pytest.mark.parametrize("batch", [False, True])
async def test_an_order_of_any_size_arrives(limits_server: ServerProcess, limits_url: str,
                                            batch: bool) -> None:
    """A 5 MB note (the table has no limit) comes through connect(), and so does the order
    after it, live and on a resume from before both, without a reconnection."""
    user = new_user(limits_url)
    with psycopg.connect(limits_url, autocommit=True) as sql:
        async with orderstream_client.connect(limits_server.base_url, token=user.token,
                                              batch=batch) as stream:
            start = stream.cursor
            with sql.transaction():  # waiting together: with batch=True, one batch frame
                row = sql.execute(
                    "INSERT INTO orders (owner_id, instrument, quantity, price, note)"
                    " VALUES (%s, 'ACME', 1, 1, repeat('h', %s)) RETURNING id",
                    (user.id, BIG_NOTE)).fetchone()
                assert row is not None
                big, after = row[0], insert_order(sql, user.id)
            live = [await next_event(stream, 15) for _ in range(2)]
            assert [e["order"]["id"] for e in live] == [big, after]
            assert live[0]["order"]["note"] == "h" * BIG_NOTE, len(live[0]["order"]["note"])
            assert stream.reconnects == 0
            await assert_silent(stream)
        async with orderstream_client.connect(limits_server.base_url, token=user.token,
                                              batch=batch, after=start) as resumed:
            replayed = [await next_event(resumed, 15) for _ in range(2)]
            # The same events (a resume may state their cursors another way); compared whole,
            # but not printed whole: a failure would show 5 MB.
            same = [without_cursor(e) for e in replayed] == [without_cursor(e) for e in live]
            assert same, [(e["op"], e["order"]["id"], len(e["order"]["note"])) for e in replayed]
            assert resumed.reconnects == 0


def test_the_client_waits_for_subscribe_past_the_servers_listener_wait() -> None:
    """Else a first connect times out just before the server says `unavailable`."""
    assert SERVER_LISTENER_WAIT >= LISTENER_WAIT_SECONDS


@pytest.mark.slow
async def test_a_first_connect_the_server_cannot_serve_raises_stream_unavailable(
        server_url: str, limits_server: ServerProcess, limits_url: str) -> None:
    """The server's database listener is down (killed, and the database refuses it a new
    connection): the server answers subscribe with `unavailable` after its 10 s wait, and
    entering connect() (default open_timeout) raises StreamUnavailable, documented and
    exported, not a bare TimeoutError or a private class. With the database closed to the
    server's pool too, the handshake's 503 is StreamUnavailable as well."""
    user = new_user(limits_url)
    base_url = limits_server.base_url
    with psycopg.connect(limits_url, autocommit=True) as sql:
        allow_connections(server_url, limits_url, False)
        try:
            assert terminate_listeners(sql) == 1
            await healthz_until(limits_server, lambda body: body["listener"] is False)
            with pytest.raises(StreamUnavailable,
                               match="subscribe: unavailable: the server is not receiving"
                               " database events") as refused:
                async with orderstream_client.connect(base_url, token=user.token):
                    pass
            assert isinstance(refused.value, OSError)  # with what cannot be reached

            # Now the pool's connections too: the handshake cannot learn who is asking.
            sql.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND pid <> pg_backend_pid()")
            with pytest.raises(StreamUnavailable, match="HTTP 503"):
                async with orderstream_client.connect(base_url, token=user.token):
                    pass
        finally:
            allow_connections(server_url, limits_url, True)
    await healthz_until(limits_server, lambda body: body["status"] == "ok")
    async with orderstream_client.connect(base_url, token=user.token) as stream:
        assert stream.owner == user.id


async def test_a_connection_that_fails_before_any_event_backs_off(
        limits_server: ServerProcess, limits_url: str) -> None:
    """Every resume fails right after `subscribed` (the change log is renamed away, so the
    server's catch-up read closes with 1011): the waits double from retry_first instead of
    starting over at each connection that subscribed, and once an event arrives the backoff
    starts over."""
    user = new_user(limits_url)
    base_url = limits_server.base_url
    with psycopg.connect(limits_url, autocommit=True) as sql:
        async with orderstream_client.connect(base_url, token=user.token) as stream:
            cursor = stream.cursor
        missed = insert_order(sql, user.id)
        sql.execute("ALTER TABLE order_changes RENAME TO order_changes_away")
        renamed = True
        try:
            async with orderstream_client.connect(base_url, token=user.token, after=cursor,
                                                  retry_first=0.05, retry_cap=1.0) as stream:
                await assert_silent(stream, 2.0)
                # Waits of 0.05, 0.1, 0.2, ... s (capped at 1), each at least half of that:
                # at most 7 connections fit in 2 s. Starting over at 0.05 s each time, the
                # client made one every 50 ms or so.
                assert 2 <= stream.reconnects <= 7, stream.reconnects
                sql.execute("ALTER TABLE order_changes_away RENAME TO order_changes")
                renamed = False
                assert (await next_event(stream))["order"]["id"] == missed
                assert stream._failures == 0  # the next lost connection is retried at once
        finally:
            if renamed:
                sql.execute("ALTER TABLE order_changes_away RENAME TO order_changes")
