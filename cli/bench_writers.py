"""`bench` scenario writers: what the triggers cost concurrent writers. N connections (8 by
default) each commit single-row `UPDATE ... SET price = price + 1 WHERE id = :id` for a few
seconds, against three tables in interleaved rounds: `orders` with our triggers, a copy with
one bare `pg_notify` row trigger (the floor of any trigger + NOTIFY design: PostgreSQL
serialises notifying commits), and a copy with no trigger. Issue 8's goal: ours >= 0.85x
the bare trigger's transactions/s.

The writers are pgbench when a binary is found (the embedded PostgreSQL wheel ships one),
else asyncpg connections in this process, which then bound the figures themselves.
"""

from __future__ import annotations

import asyncio
import random
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import psycopg

ROWS = 1000  # per table: 8 writers rarely meet on one row
WARM_UP_S = 1.0  # per table, before the measured rounds
BARE_TABLE = "bench_writers_bare"
PLAIN_TABLE = "bench_writers_plain"
# Name shown -> table. Fixed identifiers: the only ones that reach SQL text here.
TABLES = {"ours": "orders", "bare": BARE_TABLE, "none": PLAIN_TABLE}

_SETUP = f"""
CREATE TABLE {BARE_TABLE} (LIKE orders INCLUDING ALL);
CREATE TABLE {PLAIN_TABLE} (LIKE orders INCLUDING ALL);
CREATE FUNCTION bench_writers_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('bench_writers', NEW.id::text);
    RETURN NULL;
END $$;
CREATE TRIGGER bench_writers_notify AFTER UPDATE ON {BARE_TABLE}
    FOR EACH ROW EXECUTE FUNCTION bench_writers_notify();
"""
_TEARDOWN = f"""
DROP TABLE IF EXISTS {BARE_TABLE};
DROP TABLE IF EXISTS {PLAIN_TABLE};
DROP FUNCTION IF EXISTS bench_writers_notify();
"""


def pgbench_binary(url: str) -> str | None:
    """The wheel's pgbench for the server's major version (else its newest), else PATH's."""
    from db.embedded import pgserver_utils  # imported there without its platformdirs warning

    versions = pgserver_utils.POSTGRES_VERSIONS
    with psycopg.connect(url) as conn:
        major = int(conn.execute("SHOW server_version_num").fetchone()[0]) // 10000  # type: ignore[index]
    for version in ([major] if major in versions else []) + sorted(versions, reverse=True):
        candidate = Path(versions[version]) / "pgbench"
        if candidate.is_file():
            return str(candidate)
    return shutil.which("pgbench")


def _install(db: psycopg.Connection, owner: int) -> tuple[int, int]:
    """The owner's ROWS orders and the two copies with the same ids; (first id, last id)."""
    db.execute(_TEARDOWN)  # type: ignore[arg-type]  # fixed text
    db.execute(_SETUP)  # type: ignore[arg-type]
    ids = [row[0] for row in db.execute(
        "INSERT INTO orders (owner_id, instrument, quantity, price)"
        " SELECT %s, 'WRITERS', 1, 100 FROM generate_series(1, %s) RETURNING id",
        (owner, ROWS)).fetchall()]
    first, last = min(ids), max(ids)
    if last - first + 1 != len(ids):
        # pgbench picks ids from a range; someone else's inserts interleaved with ours.
        raise RuntimeError(f"the writers' {len(ids)} orders got ids {first}..{last}, not a"
                           " range of their own: run again on a quieter database")
    for table in (BARE_TABLE, PLAIN_TABLE):
        db.execute(f"INSERT INTO {table} OVERRIDING SYSTEM VALUE"  # noqa: S608
                   " SELECT * FROM orders WHERE id BETWEEN %s AND %s", (first, last))
        db.execute(f"ANALYZE {table}")
    db.execute("ANALYZE orders")
    return first, last


def _pgbench_tps(binary: str, url: str, table: str, first: int, last: int, writers: int,
                 seconds: int, folder: Path) -> float:
    script = folder / f"{table}.sql"
    script.write_text(f"\\set id random({first}, {last})\n"
                      f"UPDATE {table} SET price = price + 1 WHERE id = :id;\n")
    result = subprocess.run(  # noqa: S603 (a fixed program and our own arguments)
        [binary, "-n", "-c", str(writers), "-j", str(min(writers, 2)), "-T", str(seconds),
         "-f", str(script), url],
        capture_output=True, text=True, timeout=seconds + 60, check=False)
    found = re.search(r"^tps = ([\d.]+)", result.stdout, re.M)
    if result.returncode != 0 or found is None:
        raise RuntimeError(f"pgbench on {table} failed (exit {result.returncode}): "
                           f"{(result.stderr or result.stdout).strip()[-500:]}")
    return float(found[1])


async def _asyncpg_tps(url: str, table: str, first: int, last: int, writers: int,
                       seconds: float) -> float:
    statement = f"UPDATE {table} SET price = price + 1 WHERE id = $1"  # noqa: S608
    connections = [await asyncpg.connect(url) for _ in range(writers)]
    commits = 0
    deadline = time.perf_counter() + seconds

    async def write(conn: asyncpg.Connection) -> None:
        nonlocal commits
        rng = random.Random()
        while time.perf_counter() < deadline:
            await conn.execute(statement, rng.randint(first, last))
            commits += 1

    try:
        started = time.perf_counter()
        await asyncio.gather(*(write(conn) for conn in connections))
        return commits / (time.perf_counter() - started)
    finally:
        for conn in connections:
            await conn.close()


def _tps(binary: str | None, url: str, table: str, first: int, last: int, writers: int,
         seconds: float, folder: Path) -> float:
    if binary is not None:
        return _pgbench_tps(binary, url, table, first, last, writers, max(1, round(seconds)),
                            folder)
    return asyncio.run(_asyncpg_tps(url, table, first, last, writers, seconds))


def run_writers(url: str, owner: int, writers: int, seconds: float,
                rounds: int) -> dict[str, Any]:
    """Transactions/s per table and round, interleaved; the ratios of their means."""
    binary = pgbench_binary(url)
    whole_seconds = max(1, round(seconds))  # pgbench -T counts whole seconds
    tps: dict[str, list[float]] = {name: [] for name in TABLES}
    with psycopg.connect(url, autocommit=True) as db, \
            tempfile.TemporaryDirectory(prefix="orderstream-bench-") as folder:
        try:
            first, last = _install(db, owner)
            # Unmeasured: on fresh rows the first second on orders ran at a third of the later
            # rounds' rate (plans, caches, hint bits), which would skew round 1.
            for table in TABLES.values():
                _tps(binary, url, table, first, last, writers, WARM_UP_S, Path(folder))
            for _ in range(rounds):
                for name, table in TABLES.items():
                    tps[name].append(_tps(binary, url, table, first, last, writers, seconds,
                                          Path(folder)))
        finally:
            db.execute(_TEARDOWN)  # type: ignore[arg-type]
            db.execute("DELETE FROM orders WHERE owner_id = %s AND instrument = 'WRITERS'",
                       (owner,))
    mean = {name: sum(values) / len(values) for name, values in tps.items()}
    return {
        "tool": (f"pgbench ({binary}) -n -c {writers} -j {min(writers, 2)} -T {whole_seconds}"
                 if binary is not None else
                 f"{writers} asyncpg connections in one Python process (no pgbench found)"),
        "writers": writers,
        "seconds": whole_seconds if binary is not None else seconds,
        "rounds": rounds,
        "tps": tps,
        "mean_tps": mean,
        "ours_vs_bare": mean["ours"] / mean["bare"],
        "ours_vs_none": mean["ours"] / mean["none"],
    }
