"""A request's database connection: reads and writes admitted by the pool, 503 when busy."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg
from starlette.requests import Request

from db.pool import ApiPool, PoolBusy
from web.errors import busy_error


@contextlib.asynccontextmanager
async def reading(request: Request) -> AsyncIterator[asyncpg.Connection]:
    """A connection for a request that only reads."""
    async with _admitted(request, write=False) as conn:
        yield conn


@contextlib.asynccontextmanager
async def writing(request: Request) -> AsyncIterator[asyncpg.Connection]:
    """A connection for a request that writes: it also takes one of the pool's write slots,
    so writes queued on a row lock cannot take the connections reads need."""
    async with _admitted(request, write=True) as conn:
        yield conn


@contextlib.asynccontextmanager
async def _admitted(request: Request, write: bool) -> AsyncIterator[asyncpg.Connection]:
    pool: ApiPool = request.state.pool
    try:
        conn = await (pool.writer() if write else pool.acquire())
    except PoolBusy as exc:
        raise busy_error(exc) from None
    try:
        yield conn
    finally:
        await pool.release(conn)
