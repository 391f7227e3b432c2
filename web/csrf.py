"""CSRF tokens for cookie-authenticated unsafe requests (synchronizer token in the session)."""

from __future__ import annotations

import hmac
import secrets

from starlette.requests import HTTPConnection

SESSION_KEY = "csrf"
HEADER = "x-csrf-token"
FORM_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def csrf_token(conn: HTTPConnection) -> str:
    """The session's token, created on first use; pages embed it."""
    token = conn.session.get(SESSION_KEY)
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        conn.session[SESSION_KEY] = token
    return token


def csrf_valid(conn: HTTPConnection, submitted: str | None) -> bool:
    expected = conn.session.get(SESSION_KEY)
    if not isinstance(expected, str) or not expected or not submitted:
        return False
    return hmac.compare_digest(expected.encode(), submitted.encode())
