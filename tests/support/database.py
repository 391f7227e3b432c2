"""A database of a test module's own, and users in it.

For tests that terminate "the LISTEN backend of this database": on the run's shared database
that would also hit the listener of every other server started on it (the shared `server`
fixture's included), so such tests get a database, and a server, of their own.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg import sql as pgsql
from psycopg.conninfo import conninfo_to_dict

from cli.users import create_token, create_user
from db.embedded import EmbeddedPostgres, database_url
from db.migrate import migrate
from tests.conftest import FAST_PASSWORDS, User


@contextlib.contextmanager
def own_postgres(prefix: str) -> Iterator[tuple[EmbeddedPostgres, str]]:
    """A migrated PostgreSQL server of the caller's own (to restart, stop or crash), and the
    URL of its database; removed afterwards. (Outside pytest's tmp dir: as root, the server
    runs as another user who must reach it.)"""
    data = Path(tempfile.mkdtemp(prefix=f"orderstream-{prefix}-"))
    server = EmbeddedPostgres(data / "pg")
    try:
        url = database_url(server.start(), "postgres")
        migrate(url)
        yield server, url
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)


@contextlib.contextmanager
def own_database(server_url: str, prefix: str) -> Iterator[str]:
    """A new, migrated database on the tests' PostgreSQL server; dropped afterwards."""
    name = f"orderstream_{prefix}_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = database_url(server_url, name)
    try:
        migrate(url)
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def allow_connections(server_url: str, db_url: str, allow: bool) -> None:
    """Let new connections into the database at `db_url`, or refuse them (open ones stay)."""
    name = conninfo_to_dict(db_url)["dbname"]
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(pgsql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
            pgsql.Identifier(str(name)), pgsql.SQL("true" if allow else "false")))


def new_user(url: str, staff: bool = False, prefix: str = "user") -> User:
    """A user of the database at `url`, with a password and an API token (as `make_user`)."""
    username = f"{prefix}_{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(12)
    user_id = create_user(url, FAST_PASSWORDS, username, password, staff)
    return User(user_id, username, password, create_token(url, username), staff)
