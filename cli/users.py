"""createuser and token: user accounts and API tokens from the command line."""

from __future__ import annotations

import psycopg

from db.queries import token_hash
from db.text import USERNAME_RULE
from db.tokens import name_problem, new_secret
from web.passwords import Passwords


class UserError(ValueError):
    """A command-line user operation that cannot be done, with a message for the person."""


def add_user(conn: psycopg.Connection, passwords: Passwords, username: str, password: str,
             is_staff: bool) -> int | None:
    """Insert `username` in `conn`'s transaction and return its id, or None when the name is
    taken: an existing account is never changed."""
    try:
        row = conn.execute(
            "INSERT INTO users (username, password_hash, is_staff) VALUES (%s, %s, %s)"
            " ON CONFLICT (username) DO NOTHING RETURNING id",
            (username, passwords.hash(password), is_staff),
        ).fetchone()
    except psycopg.errors.CheckViolation:
        raise UserError(
            f"invalid username {username!r}: use {USERNAME_RULE}"
        ) from None
    return None if row is None else int(row[0])


def create_user(url: str, passwords: Passwords, username: str, password: str,
                is_staff: bool) -> int:
    """Create `username`; UserError if it exists or is not a valid name."""
    with psycopg.connect(url) as conn:
        user_id = add_user(conn, passwords, username, password, is_staff)
    if user_id is None:
        raise UserError(f"user {username!r} already exists")
    return user_id


def create_token(url: str, username: str, name: str | None = None) -> str:
    """A new API token for `username`, named `name` (as GET /api/tokens shows it; the API's
    rule, db/tokens.py; None: unnamed); only its hash is stored."""
    if name is not None:
        problem = name_problem(name)
        if problem:
            raise UserError(f"invalid token name {name!r}: {problem}")
    token = new_secret()
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "INSERT INTO api_tokens (user_id, token_hash, name)"
            " SELECT id, %s, %s FROM users WHERE username = %s RETURNING id",
            (token_hash(token), (name or "").strip(), username),
        ).fetchone()
    if row is None:
        raise UserError(f"no user {username!r}")
    return token
