"""createuser and token: user accounts and API tokens from the command line."""

from __future__ import annotations

import psycopg

from db.queries import token_hash
from db.tokens import name_problem, new_secret
from web.passwords import Passwords


class UserError(ValueError):
    """A command-line user operation that cannot be done, with a message for the person."""


def create_user(url: str, passwords: Passwords, username: str, password: str,
                is_staff: bool, update: bool = False) -> int:
    """Create `username` (or, with update=True, reset its password and staff flag)."""
    password_hash = passwords.hash(password)
    with psycopg.connect(url) as conn:
        try:
            if update:
                row = conn.execute(
                    "INSERT INTO users (username, password_hash, is_staff) VALUES (%s, %s, %s)"
                    " ON CONFLICT (username) DO UPDATE SET password_hash = EXCLUDED.password_hash,"
                    " is_staff = EXCLUDED.is_staff RETURNING id",
                    (username, password_hash, is_staff),
                ).fetchone()
            else:
                row = conn.execute(
                    "INSERT INTO users (username, password_hash, is_staff) VALUES (%s, %s, %s)"
                    " RETURNING id",
                    (username, password_hash, is_staff),
                ).fetchone()
        except psycopg.errors.UniqueViolation:
            raise UserError(f"user {username!r} already exists") from None
        except psycopg.errors.CheckViolation:
            raise UserError(
                f"invalid username {username!r}: use 1-64 letters, digits or _ . @ -"
            ) from None
    assert row is not None
    return int(row[0])


def create_token(url: str, username: str, name: str = "") -> str:
    """A new API token for `username`, named `name` (as GET /api/tokens shows it; the API's
    rule, db/tokens.py); only its hash is stored."""
    if name:
        problem = name_problem(name)
        if problem:
            raise UserError(f"invalid token name {name!r}: {problem}")
    token = new_secret()
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "INSERT INTO api_tokens (user_id, token_hash, name)"
            " SELECT id, %s, %s FROM users WHERE username = %s RETURNING id",
            (token_hash(token), name.strip(), username),
        ).fetchone()
    if row is None:
        raise UserError(f"no user {username!r}")
    return token
