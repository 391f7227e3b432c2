"""docs/deploy.md's three roles, as written there: the owner migrates; `serve`, `token` and
`createuser` run as a runtime role that owns nothing; a writer's psql change reaches a
socket, and the writer can neither read the signing key nor write the change log."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import psycopg
import pytest
from psycopg import errors

from db.changelog import prune
from db.embedded import database_url
from tests.conftest import ROOT, ServerProcess, User, login, open_socket


def _sql_blocks() -> list[str]:
    text = (ROOT / "docs" / "deploy.md").read_text()
    return re.findall(r"```sql\n(.*?)```", text, re.S)


def with_user(url: str, user: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


@dataclass
class Roles:
    owner: str
    app: str
    writer: str
    database: str
    server_url: str

    def url(self, role: str) -> str:
        return with_user(database_url(self.server_url, self.database), role)

    def rename(self, sql: str) -> str:
        for name, value in (("orderstream_owner", self.owner), ("orderstream_app", self.app),
                            ("orderstream_writer", self.writer)):
            sql = sql.replace(name, value)
        return re.sub(r"\bDATABASE orderstream\b", f'DATABASE "{self.database}"', sql)


@pytest.fixture
def roles(server_url: str) -> Iterator[Roles]:
    suffix = secrets.token_hex(3)
    made = Roles(f"os_owner_{suffix}", f"os_app_{suffix}", f"os_writer_{suffix}",
                 f"orderstream_roles_{suffix}", server_url)
    setup, _grants = _sql_blocks()
    with psycopg.connect(server_url, autocommit=True) as admin:
        # One at a time: CREATE DATABASE cannot run inside a multi-statement transaction.
        for statement in made.rename(setup).split(";"):
            if statement.strip():
                admin.execute(statement)  # type: ignore[arg-type]
    try:
        yield made
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{made.database}" WITH (FORCE)')
            for role in (made.app, made.writer, made.owner):
                admin.execute(f'DROP ROLE IF EXISTS "{role}"')


def cli(url: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "server.py", *args], cwd=ROOT, input=stdin,
                          env={**os.environ, "DATABASE_URL": url}, capture_output=True,
                          text=True, timeout=60)


async def test_serve_token_and_createuser_run_as_a_role_that_owns_nothing(
        roles: Roles, tmp_path: Path) -> None:
    migrated = cli(roles.url(roles.owner), "migrate")
    assert migrated.returncode == 0, migrated.stderr
    _setup, grants = _sql_blocks()
    with psycopg.connect(roles.url(roles.owner), autocommit=True) as owner:
        owner.execute(roles.rename(grants))  # type: ignore[arg-type]

    app_url = roles.url(roles.app)
    made = cli(app_url, "createuser", "alice", "--password-stdin", stdin="alice-password\n")
    assert made.returncode == 0, made.stderr
    token = cli(app_url, "token", "alice")
    assert token.returncode == 0, token.stderr
    migrate_as_app = cli(app_url, "migrate")
    assert migrate_as_app.returncode != 0  # nothing to migrate, but no right to try either

    with psycopg.connect(roles.url(roles.writer), autocommit=True) as writer:
        (alice_id,) = writer.execute(
            "SELECT id FROM users WHERE username = 'alice'").fetchone()  # type: ignore[misc]
    alice = User(alice_id, "alice", "alice-password", token.stdout.strip(), False)

    server = ServerProcess(app_url, tmp_path)
    server.start()
    try:
        async with open_socket(server, alice) as ws:
            await ws.subscribe_orders()
            with psycopg.connect(roles.url(roles.writer), autocommit=True) as writer:
                (order_id,) = writer.execute(
                    "INSERT INTO orders (owner_id, instrument, quantity, price)"
                    " VALUES (%s, 'LEASTPRIV', 1, 10) RETURNING id",
                    (alice_id,)).fetchone()  # type: ignore[misc]
                writer.execute("UPDATE orders SET price = 11 WHERE id = %s", (order_id,))
                for refused in ("SELECT key FROM notification_key",
                                "SELECT password_hash FROM users",
                                "INSERT INTO order_changes (seq, owner_id, frame)"
                                " VALUES (1, 1, '{}')",
                                "TRUNCATE orders"):
                    with pytest.raises(errors.InsufficientPrivilege):
                        writer.execute(refused)  # type: ignore[arg-type]
            inserted = await ws.recv_type("order")
            updated = await ws.recv_type("order")
            assert (inserted["op"], inserted["order"]["id"]) == ("insert", order_id)
            assert (updated["op"], updated["order"]["price"]) == ("update", "11")
        # The API as the app role: the list (it reads the event sequence), one order, the
        # quotes, tokens, and a login form that makes a session row.
        async with httpx.AsyncClient(base_url=server.base_url, headers=alice.auth) as client:
            listed = await client.get("/api/orders")
            assert listed.status_code == 200, listed.text
            assert [row["id"] for row in listed.json()["items"]] == [order_id]
            assert (await client.get(f"/api/orders/{order_id}")).status_code == 200
            assert (await client.get("/api/quotes?instruments=ACME")).status_code == 200
            assert (await client.get("/api/tokens")).status_code == 200
            assert (await client.get("/healthz")).status_code == 200
        async with httpx.AsyncClient(base_url=server.base_url) as browser:
            await login(browser, alice)
    finally:
        server.stop()
    # The pruner as the app role (each server runs it once a minute): with no retention, the
    # changes above are gone.
    pool = await asyncpg.create_pool(app_url, min_size=1, max_size=1)
    try:
        assert await prune(pool, 0) >= 2
    finally:
        await pool.close()
