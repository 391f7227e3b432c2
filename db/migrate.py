"""Bring the schema up to date (db/migrations, then db/triggers.sql), or say how far behind it is.

Only `migrate` (and `serve --migrate`) changes the schema. Every other command calls
`schema_status()`, which only reads two small bookkeeping tables, so it never waits for a
lock a reader of `orders` holds and can never deadlock with a migrate.

`migrate()` serialises itself with a session advisory lock (two migrates never interleave),
runs each migration in its own transaction under a short `lock_timeout`, and retries a
transaction that timed out: writers queued behind its lock request wait at most
`lock_timeout`, then go ahead while migrate backs off. db/triggers.sql is re-applied only
when its checksum differs from the one recorded in `schema_state` (or a migration ran).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
TRIGGERS_FILE = Path(__file__).resolve().parent / "triggers.sql"
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# Any constant both migrating processes agree on; serialises concurrent `migrate`s.
_LOCK_KEY = 0x6F7264657273  # "orders"
# The schema_state row that records the checksum of the triggers last applied.
_TRIGGERS_STATE = "triggers.sql"

CONNECT_TIMEOUT_S = 10  # seconds, for schema_status()'s connection
LOCK_TIMEOUT_S = 2.0  # longest a writer may queue behind one of migrate's lock requests
RETRY_FOR_S = 60.0  # how long migrate keeps retrying lock timeouts before giving up
_BACKOFF_S = (0.2, 0.5, 1.0, 2.0)  # pauses between attempts, the last one repeated


class MigrationError(RuntimeError):
    """migrate could not finish; the message is one line for the person running it."""


@dataclass(frozen=True)
class SchemaStatus:
    """How the database's schema compares with this checkout's files."""

    pending: tuple[str, ...]  # migration files not yet applied, in apply order
    triggers_current: bool  # db/triggers.sql applied with its present checksum

    @property
    def current(self) -> bool:
        return not self.pending and self.triggers_current

    def describe(self) -> str:
        """Why the schema is behind, in a few words ("2 migrations pending")."""
        parts = []
        if self.pending:
            count = len(self.pending)
            parts.append(f"{count} migration{'s' if count != 1 else ''} pending")
        if not self.triggers_current:
            parts.append("db/triggers.sql changed")
        return ", ".join(parts) or "up to date"


def migration_files(directory: Path = MIGRATIONS_DIR) -> list[Path]:
    """The migration files in apply order; refuses misnamed or duplicate numbers."""
    files = sorted(p for p in directory.iterdir() if p.suffix == ".sql")
    seen: dict[str, Path] = {}
    for path in files:
        match = _NAME.match(path.name)
        if not match:
            raise ValueError(f"migration file {path.name!r} is not named NNNN_name.sql")
        if match.group(1) in seen:
            first = seen[match.group(1)].name
            raise ValueError(f"migrations {first!r} and {path.name!r} share a number")
        seen[match.group(1)] = path
    return files


def triggers_checksum(text: str | None = None) -> str:
    """sha256 (hex) of db/triggers.sql as it is now (or of `text`)."""
    body = TRIGGERS_FILE.read_text() if text is None else text
    return hashlib.sha256(body.encode()).hexdigest()


def schema_status(url: str) -> SchemaStatus:
    """Compare the database with the migration files and db/triggers.sql. Reads only.

    No DDL and no lock beyond ACCESS SHARE on the two bookkeeping tables, so it neither waits
    for nor blocks readers and writers of `orders`.
    """
    # The first connection a command makes: bounded, so a host that drops packets gives one
    # line after a while rather than a hang (unless the URL sets its own connect_timeout).
    timeout = {} if "connect_timeout" in conninfo_to_dict(url) else {
        "connect_timeout": CONNECT_TIMEOUT_S}
    with psycopg.connect(url, autocommit=True, **timeout) as conn:
        return _status(conn)


def _status(conn: psycopg.Connection) -> SchemaStatus:
    names = [path.name for path in migration_files()]
    has_migrations, has_state = conn.execute(
        "SELECT to_regclass('schema_migrations') IS NOT NULL,"
        " to_regclass('schema_state') IS NOT NULL"
    ).fetchone() or (False, False)
    applied: set[str] = set()
    if has_migrations:
        applied = {row[0] for row in conn.execute("SELECT name FROM schema_migrations")}
    recorded = None
    if has_state:
        row = conn.execute(
            "SELECT checksum FROM schema_state WHERE name = %s", (_TRIGGERS_STATE,)
        ).fetchone()
        recorded = row[0] if row else None
    return SchemaStatus(
        pending=tuple(name for name in names if name not in applied),
        triggers_current=recorded == triggers_checksum(),
    )


def migrate(url: str, lock_timeout: float = LOCK_TIMEOUT_S,
            retry_for: float = RETRY_FOR_S) -> list[str]:
    """Bring the database at `url` up to date; returns the names of newly applied migrations.

    Each DDL transaction runs with `lock_timeout` (seconds); one that times out waiting for a
    lock (a long transaction holds `orders`) is rolled back and retried for up to `retry_for`
    seconds, then MigrationError is raised. Migrations already committed stay applied.
    """
    applied: list[str] = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET client_min_messages = warning")
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            # migrate's own bookkeeping. On an existing table IF NOT EXISTS takes no lock.
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_state ("
                " name text PRIMARY KEY, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            status = _status(conn)
            deadline = time.monotonic() + retry_for
            for path in migration_files():
                if path.name not in status.pending:
                    continue
                _with_retry(conn, lock_timeout, deadline, path.name,
                            path.read_text(),
                            ("INSERT INTO schema_migrations (name) VALUES (%s)", (path.name,)))
                log.info("applied migration %s", path.name)
                applied.append(path.name)
            # A migration may have re-created a table the triggers hang on: re-apply then too.
            if applied or not status.triggers_current:
                text = TRIGGERS_FILE.read_text()
                _with_retry(conn, lock_timeout, deadline, TRIGGERS_FILE.name, text,
                            ("INSERT INTO schema_state (name, checksum) VALUES (%s, %s)"
                             " ON CONFLICT (name) DO UPDATE SET checksum = EXCLUDED.checksum,"
                             " applied_at = now()",
                             (_TRIGGERS_STATE, triggers_checksum(text))))
                log.info("applied %s", TRIGGERS_FILE.name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied


def _with_retry(conn: psycopg.Connection, lock_timeout: float, deadline: float, what: str,
                script: str, record: tuple[str, tuple[str, ...]]) -> None:
    """Run `script` and the `record` statement in one transaction, retrying lock timeouts."""
    attempt = 0
    while True:
        try:
            with conn.transaction():
                # Local to the transaction (is_local = true), in milliseconds.
                conn.execute("SELECT set_config('lock_timeout', %s, true)",
                             (str(max(1, round(lock_timeout * 1000))),))
                conn.execute(script.encode())  # a file of ours (bytes: a script, not a literal)
                conn.execute(*record)
            return
        except (errors.LockNotAvailable, errors.DeadlockDetected):
            # Rolled back: every writer queued behind our lock request goes ahead now. (A
            # deadlock: the script locks several tables, a writer's transaction may hold one
            # and want another; PostgreSQL cancels one of the two, we retry.)
            pause = _BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)]
            attempt += 1
            if time.monotonic() + pause >= deadline:
                raise MigrationError(
                    f"{what}: could not lock its tables within {lock_timeout:g}s in {attempt}"
                    " attempts; a long transaction holds them (see pg_stat_activity)"
                ) from None
            log.warning("%s: lock not available within %gs (attempt %d); retrying in %gs",
                        what, lock_timeout, attempt, pause)
            time.sleep(pause)
