"""CSRF tokens for cookie-authenticated unsafe requests (synchronizer token in the session)."""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Iterable
from urllib.parse import urlsplit

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


def same_origin(conn: HTTPConnection, also: Iterable[str] = ()) -> bool:
    """Whether a request may come from where its Origin says: no Origin (programs send
    none; browsers send one on every cross-site POST and WebSocket handshake), the server's
    own host:port, or one of the origins `also` lists."""
    origin = conn.headers.get("origin")
    if origin is None:
        return True
    if origin.rstrip("/") in (a.rstrip("/") for a in also):
        return True
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc == conn.headers.get("host")


def csrf_valid(conn: HTTPConnection, submitted: str | None) -> bool:
    expected = conn.session.get(SESSION_KEY)
    if not isinstance(expected, str) or not expected or not submitted:
        return False
    return hmac.compare_digest(expected.encode(), submitted.encode())
