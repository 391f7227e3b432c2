"""The listener survives whatever its dying connection makes asyncpg raise.

A terminated backend sends its last message (FATAL "terminating connection due to
administrator command") and then closes. If the close reaches asyncpg a moment after that
message (tests/test_property_convergence.py found it by terminating the LISTEN backend while
the listener was reconnecting or running its health query), asyncpg never calls the
termination listener, and the next statement on the connection (the health query, or a
LISTEN of the reconnect) raises `asyncpg.exceptions.InternalClientError` ("cannot switch to
state 11; another operation (2) is in progress"), which is neither a PostgresError nor an
InterfaceError. The server must treat that connection as lost like any other, reconnect and
replay the gap.

A proxy in front of the database makes the late close deterministic: it forwards every byte,
but when a backend closes, the client side stays open until the client closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from urllib.parse import quote

import psycopg
from psycopg.conninfo import conninfo_to_dict

from tests.conftest import ServerProcess, insert_order, open_socket, terminate_listeners
from tests.support.database import new_user, own_database


class LateCloseProxy:
    """A TCP proxy to the database (on a thread of its own, so a blocking caller cannot stall
    it) that keeps a client's connection open after its backend has closed."""

    def __init__(self, url: str) -> None:
        info = conninfo_to_dict(url)
        self._info = info
        host = str(info.get("host") or "127.0.0.1")
        port = int(info.get("port") or 5432)
        self._unix_path = f"{host}/.s.PGSQL.{port}" if host.startswith("/") else None
        self._tcp = (host, port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._handlers: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    @contextlib.contextmanager
    def running(self) -> Iterator[str]:
        """Serve; yields the database URL that goes through the proxy."""
        self._thread.start()
        try:
            self._server = asyncio.run_coroutine_threadsafe(
                asyncio.start_server(self._handle, "127.0.0.1", 0), self._loop).result(5)
            port = self._server.sockets[0].getsockname()[1]
            auth = quote(str(self._info.get("user", "")), safe="")
            if self._info.get("password"):
                auth += ":" + quote(str(self._info["password"]), safe="")
            yield (f"postgresql://{auth + '@' if auth else ''}127.0.0.1:{port}/"
                   f"{quote(str(self._info['dbname']), safe='')}")
        finally:
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()  # every copy ends: the handlers return
        await asyncio.wait_for(asyncio.gather(*self._handlers, return_exceptions=True), 5)

    async def _handle(self, client_in: asyncio.StreamReader,
                      client_out: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(client_out)
        try:
            if self._unix_path is not None:
                server_in, server_out = await asyncio.open_unix_connection(self._unix_path)
            else:
                server_in, server_out = await asyncio.open_connection(*self._tcp)
            self._writers.add(server_out)

            asked_to_close = asyncio.Event()

            async def to_server() -> None:
                await _copy(client_in, server_out, asked_to_close)
                server_out.close()  # the client left: so does its backend connection

            async def to_client() -> None:
                await _copy(server_in, client_out)
                # The backend closed. Unless the client asked for it (a graceful close
                # waits for it), the client is not told until it leaves by itself.
                if asked_to_close.is_set():
                    client_out.close()

            await asyncio.gather(to_server(), to_client())
        finally:
            client_out.close()
            self._handlers.discard(task)
            self._writers.discard(client_out)


# The protocol's Terminate message: the last thing a client sends when it closes gracefully.
TERMINATE = b"X\x00\x00\x00\x04"


async def _copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter,
                terminate_seen: asyncio.Event | None = None) -> None:
    with contextlib.suppress(OSError):
        while data := await source.read(65536):
            if terminate_seen is not None and data.endswith(TERMINATE):
                terminate_seen.set()
            sink.write(data)
            await sink.drain()


def terminate_listener(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        return terminate_listeners(conn)


async def test_listener_recovers_when_the_close_comes_after_the_last_message(server_url,
                                                                             tmp_path):
    with own_database(server_url, "supervisor") as url, \
            LateCloseProxy(url).running() as proxied:
        proc = ServerProcess(proxied, tmp_path)
        proc.start()
        try:
            alice = new_user(url)
            async with open_socket(proc, alice) as ws:
                await ws.subscribe_orders()
                with psycopg.connect(url, autocommit=True) as sql:
                    before = insert_order(sql, alice.id, "BEFORE")
                    assert (await ws.recv_type("order"))["order"]["id"] == before
                    assert terminate_listener(url) == 1
                    # Committed while the listener is down (or being replaced): the
                    # recovery reads it from the change log.
                    after = insert_order(sql, alice.id, "AFTER")
                event = await ws.recv_type("order", timeout=5)
                assert event["order"]["id"] == after
        finally:
            proc.stop()
