"""What giving a connection back to the API pool costs and guarantees: no round trip after
a request that left nothing open, a rollback after one that left a transaction open."""

from __future__ import annotations

import psycopg

from db.pool import create_pool


def _backend(sql: psycopg.Connection, pid: int) -> tuple[str, str]:
    state, query = sql.execute("SELECT state, query FROM pg_stat_activity WHERE pid = %s",
                               (pid,)).fetchone()  # type: ignore[misc]
    return state, query


async def test_a_release_after_a_finished_request_sends_nothing(db_url, sql):
    pool = await create_pool(db_url, 1, 2)
    try:
        async with pool.acquire() as conn:
            pid = await conn.fetchval("SELECT pg_backend_pid() /* the request */")
        # asyncpg's default reset (RESET ALL, UNLISTEN *, ...) would be the last query.
        assert _backend(sql, pid) == ("idle", "SELECT pg_backend_pid() /* the request */")
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") == pid  # the same, reused
    finally:
        await pool.close()


async def test_a_transaction_left_open_is_rolled_back_on_release(db_url, sql):
    sql.execute("CREATE TABLE IF NOT EXISTS pool_release_probe (n int)")
    pool = await create_pool(db_url, 1, 2)
    try:
        conn = await pool.acquire()
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        await conn.execute("BEGIN")
        await conn.execute("INSERT INTO pool_release_probe VALUES (1)")
        assert _backend(sql, pid)[0] == "idle in transaction"
        await pool.release(conn)
        assert _backend(sql, pid) == ("idle", "ROLLBACK")
        assert sql.execute("SELECT count(*) FROM pool_release_probe").fetchone() == (0,)
        async with pool.acquire() as again:
            assert await again.fetchval("SELECT pg_backend_pid()") == pid
            assert not again.is_in_transaction()
    finally:
        await pool.close()
        sql.execute("DROP TABLE pool_release_probe")
