"""The asyncpg connection pool the web app queries through, and its admission rules."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Generator
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from db.failures import DATABASE_ERRORS

# Seconds asyncpg may take to open a connection (its default is a minute): a database that
# drops packets must not hold requests, the listener or startup that long.
CONNECT_TIMEOUT_S = 5.0
# Seconds past statement_timeout a query's answer may take before the client gives up on
# it: the server cancels a slow query itself at statement_timeout, so only a database that
# stopped answering (a network that drops packets) meets this bound.
COMMAND_TIMEOUT_MARGIN_S = 2.0
# Seconds a connection's reset after use may take before it is dropped: only a request that
# left a transaction open needs a round trip (its ROLLBACK).
RELEASE_TIMEOUT_S = 1.0

log = logging.getLogger(__name__)


class PoolBusy(TimeoutError):
    """No connection (or write slot) came free within the acquire timeout.

    A TimeoutError, as asyncpg's own acquire timeout is, so code that already survives
    one (and every `except OSError`) survives this too.
    """


class ApiPool(asyncpg.Pool):
    """A pool whose every acquire waits at most `acquire_timeout` seconds (then PoolBusy),
    and which keeps connections back so one kind of work cannot take them all:

    - writes (`writer()`) run at most `max_size - read_reserve` at a time, so writes queued
      on a row lock leave connections for reads and the auth lookup;
    - everything but `ping()` holds at most `max_size - 1`, so a health check always finds
      a connection.
    """

    def __init__(self, *args: Any, acquire_timeout: float | None, read_reserve: int,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        max_size = kwargs["max_size"]
        self.acquire_timeout = acquire_timeout
        self.write_slots = max(1, max_size - read_reserve)
        self._shared = asyncio.Semaphore(max(1, max_size - 1))
        self._writes = asyncio.Semaphore(self.write_slots)
        # Gates each connection was admitted through, freed with it in release().
        self._admitted: dict[PoolConnectionProxy, tuple[asyncio.Semaphore, ...]] = {}

    def acquire(self, *, timeout: float | None = None) -> _Admission:  # type: ignore[override]
        """A connection, as asyncpg's acquire() gives (`async with` or `await` + release()),
        within `timeout` seconds (default: the pool's acquire timeout), else PoolBusy."""
        return _Admission(self, (self._shared,), timeout, "database connection")

    def writer(self, *, timeout: float | None = None) -> _Admission:
        """Like acquire(), for a request that writes: also takes one of the write slots."""
        return _Admission(self, (self._writes, self._shared), timeout, "write slot")

    async def release(self, connection: Any, *, timeout: float | None = None) -> None:
        """Give a connection back, within `timeout` seconds (default RELEASE_TIMEOUT_S)."""
        try:
            await super().release(
                connection, timeout=RELEASE_TIMEOUT_S if timeout is None else timeout)
        except DATABASE_ERRORS as exc:
            # The reset after use failed or hung (a query timed out on a database that
            # stopped answering, say): asyncpg has terminated the connection and the pool
            # opens a new one when needed. The request's own outcome stands.
            log.warning("dropped a database connection that could not be reset: %s: %s",
                        type(exc).__name__, exc)
        finally:
            for gate in self._admitted.pop(connection, ()):
                gate.release()

    async def ping(self, timeout: float = 2.0) -> None:
        """`SELECT 1` on the connection the gates keep back; raises if the database does not
        answer within `timeout` seconds."""
        async with asyncio.timeout(timeout):
            async with super().acquire() as conn:
                await conn.fetchval("SELECT 1")

    async def _admit(self, gates: tuple[asyncio.Semaphore, ...], timeout: float | None,
                     what: str) -> PoolConnectionProxy:
        timeout = self.acquire_timeout if timeout is None else timeout
        taken: list[asyncio.Semaphore] = []
        try:
            async with asyncio.timeout(timeout):
                for gate in gates:
                    await gate.acquire()
                    taken.append(gate)
                conn = await super().acquire()
        except TimeoutError:
            for gate in taken:
                gate.release()
            raise PoolBusy(f"no {what} came free within {timeout:g} s") from None
        except BaseException:
            for gate in taken:
                gate.release()
            raise
        self._admitted[conn] = tuple(taken)
        return conn


class _Admission:
    """What ApiPool.acquire() and writer() return: usable as `async with` or `await`."""

    def __init__(self, pool: ApiPool, gates: tuple[asyncio.Semaphore, ...],
                 timeout: float | None, what: str) -> None:
        self._pool = pool
        self._gates = gates
        self._timeout = timeout
        self._what = what
        self._conn: PoolConnectionProxy | None = None

    def __await__(self) -> Generator[Any, None, PoolConnectionProxy]:
        return self._pool._admit(self._gates, self._timeout, self._what).__await__()

    async def __aenter__(self) -> PoolConnectionProxy:
        self._conn = await self._pool._admit(self._gates, self._timeout, self._what)
        return self._conn

    async def __aexit__(self, *exc: object) -> None:
        conn, self._conn = self._conn, None
        await self._pool.release(conn)


async def create_pool(url: str, min_size: int = 2, max_size: int = 10, *,
                      acquire_timeout_s: float = 0, read_reserve: int = 0,
                      statement_timeout_ms: int = 0, lock_timeout_ms: int = 0) -> ApiPool:
    """A pool whose connections run in UTC, so timestamps render the same everywhere, with
    PostgreSQL's statement_timeout and lock_timeout set on every connection (0: off) and
    acquires bounded by `acquire_timeout_s` (0: wait forever). A query whose answer has
    not come `COMMAND_TIMEOUT_MARGIN_S` after statement_timeout raises TimeoutError."""
    pool = ApiPool(
        url,
        min_size=min(min_size, max_size),
        max_size=max_size,
        max_queries=50000,
        max_inactive_connection_lifetime=300.0,
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        # Opening a connection (the pool reopens lost ones on acquire) may take this long;
        # acquires are bounded by `acquire_timeout_s` on top.
        timeout=CONNECT_TIMEOUT_S,
        command_timeout=(statement_timeout_ms / 1000 + COMMAND_TIMEOUT_MARGIN_S
                         if statement_timeout_ms > 0 else None),
        acquire_timeout=acquire_timeout_s if acquire_timeout_s > 0 else None,
        read_reserve=read_reserve,
        reset=_keep_session,
        server_settings={
            "timezone": "UTC",
            "application_name": "orderstream",
            "statement_timeout": str(max(0, statement_timeout_ms)),
            "lock_timeout": str(max(0, lock_timeout_ms)),
        },
    )
    await pool
    return pool


async def _keep_session(connection: asyncpg.Connection) -> None:
    """The pool's reset after use, past asyncpg's own (which rolls back a transaction left
    open): nothing. asyncpg's default sends `RESET ALL`, `UNLISTEN *`, `CLOSE ALL` and
    `pg_advisory_unlock_all()`, a round trip on every release, for session state no query
    here leaves: settings are per transaction (`SET LOCAL`, `set_config(..., true)`),
    locks are transaction locks, and LISTEN has a connection of its own. During 10,000
    WebSocket handshakes (one token lookup each) that round trip was 6% of the server
    (py-spy), and past the event loop's lag it timed out and dropped connections."""

