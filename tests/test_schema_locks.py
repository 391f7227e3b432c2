"""Only `migrate` changes the schema: other commands never wait for (or queue writers behind)
a lock a reader of `orders` holds, commands run at once never deadlock, and `migrate` itself
waits at most its lock_timeout per attempt, retrying."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import psycopg
import pytest

from db.migrate import migration_files, schema_status
from tests.conftest import ROOT, ServerProcess, free_port, insert_order
from tests.support.database import new_user, own_database

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def url(server_url: str) -> Iterator[str]:
    """A database of this module's own: tests here make its schema stale on purpose."""
    with own_database(server_url, "locks") as url:
        yield url


def cli(url: str, *args: str, stdin: str | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "DATABASE_URL": url, "ORDERSTREAM_ARGON2_TIME_COST": "1",
           "ORDERSTREAM_ARGON2_MEMORY_COST_KIB": "8192", "ORDERSTREAM_LOG_LEVEL": "warning"}
    proc = subprocess.Popen([sys.executable, "server.py", *args], cwd=ROOT, env=env,
                            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.stdin is not None:  # one line, then EOF, while the command starts
        proc.stdin.write(stdin or "")
        proc.stdin.close()
        proc.stdin = None
    return proc


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


class Writer(threading.Thread):
    """Single-row UPDATEs in a loop (autocommit, like an app); records the longest one."""

    def __init__(self, url: str, order_id: int) -> None:
        super().__init__(daemon=True)
        self.url, self.order_id = url, order_id
        self.stopping = threading.Event()
        self.longest = 0.0
        self.count = 0

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stopping.is_set():
                began = time.monotonic()
                conn.execute("UPDATE orders SET price = price + 1 WHERE id = %s",
                             (self.order_id,))
                self.longest = max(self.longest, time.monotonic() - began)
                self.count += 1
                time.sleep(0.01)

    def stop(self) -> float:
        self.stopping.set()
        self.join(10)
        assert self.count > 10, "the writer hardly ran"
        return self.longest


class LockWatcher(threading.Thread):
    """Polls pg_stat_activity: which statements of the database ever waited for a lock. The
    load-independent proof that nothing queued behind the reader (timings vary with load)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stopping = threading.Event()
        self.waited: set[str] = set()

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stopping.is_set():
                # Table and row locks only: committing a NOTIFY takes a database-wide
                # "object" lock (the notification queue) that writers briefly queue on.
                rows = conn.execute(
                    "SELECT a.query FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid"
                    " WHERE a.datname = current_database() AND NOT l.granted"
                    " AND l.locktype IN ('relation', 'tuple', 'transactionid')").fetchall()
                self.waited.update(row[0] for row in rows)
                time.sleep(0.01)

    def stop(self) -> set[str]:
        self.stopping.set()
        self.join(10)
        return self.waited


def open_reader(url: str) -> psycopg.Connection:
    """A BI tool: an open transaction that has read orders (ACCESS SHARE, held until it ends)."""
    conn = psycopg.connect(url)
    conn.execute("SELECT count(*) FROM orders").fetchone()
    conn.execute("SELECT * FROM orders ORDER BY id LIMIT 1 FOR KEY SHARE").fetchall()
    return conn


def test_commands_finish_while_a_reader_holds_orders(url: str, tmp_path: Path) -> None:
    owner = new_user(url)
    with psycopg.connect(url, autocommit=True) as conn:
        order_id = insert_order(conn, owner.id)
    reader = open_reader(url)
    writer = Writer(url, order_id)
    writer.start()
    watcher = LockWatcher(url)
    watcher.start()
    timings: dict[str, float] = {}
    second = ServerProcess(url, tmp_path)
    try:
        began = time.monotonic()
        code, out, err = finish(cli(url, "token", owner.username), timeout=30)
        timings["token"] = time.monotonic() - began
        assert code == 0 and out.strip(), err

        began = time.monotonic()
        code, _, err = finish(cli(url, "createuser", f"lock_{os.getpid()}", "--password-stdin",
                                  stdin="long-enough-pw\n"), timeout=30)
        timings["createuser"] = time.monotonic() - began
        assert code == 0, err

        began = time.monotonic()  # nothing to apply: it must not touch orders either
        code, out, err = finish(cli(url, "migrate"), timeout=30)
        timings["migrate"] = time.monotonic() - began
        assert code == 0 and out == "database is up to date\n", err

        began = time.monotonic()
        second.start(timeout=30)
        timings["serve"] = time.monotonic() - began
    finally:
        second.stop()
        waited = watcher.stop()
        longest = writer.stop()
        reader.close()
    print(f"with an open reader: {timings}; longest writer UPDATE {longest * 1000:.0f} ms")
    assert waited == set(), f"statements waited for a lock: {waited}"
    for name, seconds in timings.items():
        assert seconds < 5, f"{name} took {seconds:.1f}s with a reader holding orders"
    assert longest < 1.0, f"a writer waited {longest:.2f}s behind a command"


def test_concurrent_createuser_migrate_and_token_never_fail(url: str) -> None:
    failures: list[str] = []
    prefix = f"race{os.getpid()}"
    for round_ in range(4):
        procs = [cli(url, "createuser", f"{prefix}_{round_}_{i}", "--password-stdin",
                     stdin="long-enough-pw\n") for i in range(3)]
        procs.append(cli(url, "migrate"))
        for proc in procs:
            code, _, err = finish(proc)
            if code != 0:
                failures.append(f"{proc.args[2:]}: exit {code}: {err.strip()}")
    tokens = [cli(url, "token", f"{prefix}_0_{i}") for i in range(3)]
    for proc in tokens:
        code, out, err = finish(proc)
        if code != 0 or not out.strip():
            failures.append(f"{proc.args[2:]}: exit {code}: {err.strip()}")
    assert failures == []


def _make_triggers_stale(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE schema_state SET checksum = 'stale' WHERE name = 'triggers.sql'")
    assert not schema_status(url).triggers_current


# When migrate (the backend holding its advisory lock) waits for a lock: one row per
# statement, so each attempt shows up with a query_start of its own.
MIGRATE_WAITING = ("SELECT a.query_start FROM pg_stat_activity a"
                   " JOIN pg_locks l ON l.pid = a.pid AND l.locktype = 'advisory' AND l.granted"
                   " WHERE a.datname = current_database() AND a.wait_event_type = 'Lock'")


def wait_for_lock_attempts(url: str, migrate: subprocess.Popen[str], attempts: int,
                           timeout: float = 25.0) -> None:
    """Until `attempts` of migrate's statements have been seen waiting for a lock (each one
    but the last timed out, and was retried)."""
    seen: set[datetime] = set()
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while len(seen) < attempts:
            assert migrate.poll() is None, f"migrate ended after {len(seen)} lock wait(s)"
            assert time.monotonic() < deadline, (
                f"migrate waited for a lock {len(seen)} time(s) in {timeout:g} s,"
                f" not {attempts}")
            seen.update(row[0] for row in conn.execute(MIGRATE_WAITING))
            time.sleep(0.01)


def test_migrate_waits_for_a_reader_without_holding_writers_up(url: str) -> None:
    owner = new_user(url)
    with psycopg.connect(url, autocommit=True) as conn:
        order_id = insert_order(conn, owner.id)
    _make_triggers_stale(url)
    behind = finish(cli(url, "token", owner.username))
    assert behind[0] == 1 and "schema is behind" in behind[2] and "triggers" in behind[2]
    assert len(behind[2].strip().splitlines()) == 1

    reader = open_reader(url)
    writer = Writer(url, order_id)
    writer.start()
    watcher = LockWatcher(url)
    watcher.start()
    try:
        migrate = cli(url, "migrate", "--lock-timeout", "0.3", "--retry-for", "30")
        wait_for_lock_attempts(url, migrate, 3)  # two timed out while the reader is open
        assert migrate.poll() is None, "migrate finished while a reader held orders"
        reader.close()
        code, out, err = finish(migrate)
    finally:
        waited = watcher.stop()
        longest = writer.stop()
        reader.close()
    print(f"migrate against a reader: longest writer UPDATE {longest * 1000:.0f} ms")
    # The watcher sees what waited: migrate's script, and the writer queued behind it.
    assert any("trigger" in query.lower() for query in waited), waited
    assert any(query.startswith("UPDATE orders") for query in waited), waited
    assert code == 0 and "up to date" in out, err
    assert "retrying" in err
    assert schema_status(url).current
    assert longest < 0.3 + 0.5, f"a writer waited {longest:.2f}s behind migrate"


def test_migrate_gives_up_with_one_line_while_a_reader_stays(url: str) -> None:
    _make_triggers_stale(url)
    reader = open_reader(url)
    try:
        began = time.monotonic()
        code, _, err = finish(cli(url, "migrate", "--lock-timeout", "0.2", "--retry-for", "1.5"))
        took = time.monotonic() - began
    finally:
        reader.close()
    lines = [line for line in err.splitlines() if line.startswith("server.py:")]
    assert code == 1 and len(lines) == 1, err
    assert "could not lock" in lines[0] and "Traceback" not in err
    assert took < 10
    assert finish(cli(url, "migrate"))[0] == 0  # the reader gone, it goes through
    assert schema_status(url).current


def test_serve_refuses_a_schema_behind_and_serve_migrate_catches_up(url: str) -> None:
    last = migration_files()[-1].name
    with psycopg.connect(url, autocommit=True) as conn:
        # Only the record goes: the check compares records with files, and re-inserting
        # the record below avoids re-running a migration that need not be re-runnable.
        conn.execute("DELETE FROM schema_migrations WHERE name = %s", (last,))
    assert schema_status(url).pending == (last,)
    code, _, err = finish(cli(url, "serve", "--port", "1"), timeout=30)
    assert code == 1 and err.strip().endswith(
        "the database schema is behind (1 migration pending); run `python server.py migrate`"
        " or `serve --migrate`"), err
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (last,))
    _make_triggers_stale(url)
    port = free_port()
    proc = cli(url, "serve", "--migrate", "--port", str(port))
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.communicate()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, "serve --migrate did not come up"
            time.sleep(0.1)
        assert schema_status(url).current
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
