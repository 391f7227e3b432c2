"""Apply db/migrations/NNNN_name.sql once each, in order, then re-apply db/triggers.sql."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import psycopg

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
TRIGGERS_FILE = Path(__file__).resolve().parent / "triggers.sql"
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# Any constant both migrating processes agree on; serialises concurrent `migrate`s.
_LOCK_KEY = 0x6F7264657273  # "orders"


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


def migrate(url: str) -> list[str]:
    """Bring the database at `url` up to date; returns the names of newly applied migrations."""
    applied: list[str] = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET client_min_messages = warning")
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT name FROM schema_migrations")}
            for path in migration_files():
                if path.name in done:
                    continue
                with conn.transaction():
                    conn.execute(path.read_text())
                    conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (path.name,))
                log.info("applied migration %s", path.name)
                applied.append(path.name)
            with conn.transaction():
                conn.execute(TRIGGERS_FILE.read_text())
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied
