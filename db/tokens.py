"""API tokens a user manages over HTTP: create (the secret once), list own, revoke own.

Only the SHA-256 of a token is stored (see queries.token_hash). Revoking sets revoked_at;
the api_tokens_revoked trigger (db/triggers.sql) announces it on channel 'auth', so every
server process closes the token's sockets, and user_by_token refuses it from then on.
"""

from __future__ import annotations

import secrets
from typing import Any

import asyncpg

from db.queries import Executor, token_hash
from db.text import CONTROL_CHARACTERS, encodable

# Active tokens a user may hold at once: a runaway script cannot fill the table.
MAX_TOKENS_PER_USER = 100
MAX_NAME = 100  # characters of a token's name (api_tokens_name_length)


def name_problem(name: object) -> str | None:
    """What is wrong with `name` as a token's name (the API's and `server.py token`'s rule),
    or None. A valid name is stored stripped."""
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
        return f"must be a string of 1-{MAX_NAME} characters, not only spaces"
    if CONTROL_CHARACTERS.search(name):
        return "must not contain control characters"
    if not encodable(name):
        return "must be valid Unicode text"
    return None


def new_secret() -> str:
    """A fresh token: 256 random bits, URL-safe (also valid in a WebSocket subprotocol)."""
    return secrets.token_urlsafe(32)


async def create_token(db: asyncpg.Connection, user_id: int, name: str
                       ) -> tuple[dict[str, Any], str] | None:
    """A new token for the user: (its row, the secret), or None when the user already holds
    MAX_TOKENS_PER_USER active tokens. The secret is returned here and never again."""
    secret = new_secret()
    async with db.transaction():
        # Serialise one user's creations, so two at once cannot both pass the count.
        await db.execute("SELECT pg_advisory_xact_lock(hashtextextended('api_tokens', $1))",
                         user_id)
        row = await db.fetchrow(
            "INSERT INTO api_tokens (user_id, token_hash, name)"
            " SELECT $1, $2, $3 WHERE (SELECT count(*) FROM api_tokens"
            "  WHERE user_id = $1 AND revoked_at IS NULL) < $4"
            " RETURNING id, name, created_at, last_used_at",
            user_id, token_hash(secret), name, MAX_TOKENS_PER_USER)
    return None if row is None else (dict(row), secret)


async def list_tokens(db: Executor, user_id: int) -> list[dict[str, Any]]:
    """The user's active tokens, newest first; never the secret or its hash."""
    rows = await db.fetch(
        "SELECT id, name, created_at, last_used_at FROM api_tokens"
        " WHERE user_id = $1 AND revoked_at IS NULL"
        " ORDER BY id DESC", user_id)
    return [dict(row) for row in rows]


async def get_token(db: Executor, user_id: int, token_id: int) -> dict[str, Any] | None:
    row = await db.fetchrow(
        "SELECT id, name, created_at, last_used_at FROM api_tokens"
        " WHERE id = $1 AND user_id = $2"
        " AND revoked_at IS NULL", token_id, user_id)
    return None if row is None else dict(row)


async def revoke_token(db: Executor, user_id: int, token_id: int) -> bool:
    """Revoke one of the user's own active tokens; False if there is no such token."""
    revoked = await db.fetchval(
        "UPDATE api_tokens SET revoked_at = now() WHERE id = $1 AND user_id = $2"
        " AND revoked_at IS NULL RETURNING id", token_id, user_id)
    return revoked is not None
