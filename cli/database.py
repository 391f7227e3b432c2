"""Which database a command uses: DATABASE_URL if set, else the embedded server in var/pg."""

from __future__ import annotations

import contextlib
import logging

import psycopg
from psycopg import sql

import config
from db.embedded import EmbeddedPostgres, EmbeddedPostgresError, database_url

log = logging.getLogger(__name__)

EMBEDDED_DBNAME = "orderstream"


class Database:
    """The resolved database URL, and the embedded server behind it when there is one."""

    def __init__(self, settings: config.Settings, keep_running: bool = False) -> None:
        self.embedded: EmbeddedPostgres | None = None
        if settings.database_url:
            self.url = settings.database_url
            return
        self.embedded = EmbeddedPostgres(settings.data_path / "pg")
        server_url = self.embedded.start(keep_running=keep_running)
        self.url = database_url(server_url, EMBEDDED_DBNAME)
        _create_database(server_url, EMBEDDED_DBNAME)

    def stop(self) -> None:
        if self.embedded is not None:
            self.embedded.stop()


def _create_database(server_url: str, name: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            # Another process may create it first.
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                conn.execute(create)


def stop_embedded(settings: config.Settings, force: bool = False) -> str:
    """Stop the embedded server (`db-stop`); returns what happened, in one line."""
    if settings.database_url:
        raise EmbeddedPostgresError(
            "db-stop stops the embedded PostgreSQL, but a database URL is configured "
            "(DATABASE_URL or database_url): stop that server with its own tools"
        )
    data_dir = settings.data_path / "pg"
    if not EmbeddedPostgres(data_dir).shutdown(force=force):
        return f"PostgreSQL in {data_dir} is not running"
    return f"stopped PostgreSQL in {data_dir}"
