"""Signed notifications: the triggers send "<tag> <payload>", where the tag is the first 16
bytes of HMAC-SHA256(key, payload) in hex and the key is a secret in `notification_key`
(migration 0008) that writers cannot read. Anyone who can connect may NOTIFY; only what the
triggers signed is believed."""

from __future__ import annotations

import hashlib
import hmac

import asyncpg

TAG_CHARS = 32  # 16 bytes in hex


async def load_key(conn: asyncpg.Connection) -> bytes:
    """The signing key (readable by the owner and the runtime role only)."""
    key = await conn.fetchval("SELECT key FROM notification_key")
    if key is None:
        raise RuntimeError("notification_key is empty: run `python server.py migrate`")
    return bytes(key)


def tag(key: bytes, payload: str) -> str:
    """The tag the triggers compute for `payload` (tests use it to sign on purpose)."""
    return hmac.new(key, payload.encode(), hashlib.sha256).digest()[:16].hex()


def sign(key: bytes, payload: str) -> str:
    return f"{tag(key, payload)} {payload}"


def open_signed(key: bytes, signed: str) -> str | None:
    """The payload of a notification the triggers signed, or None if they did not."""
    if len(signed) <= TAG_CHARS or signed[TAG_CHARS] != " ":
        return None
    payload = signed[TAG_CHARS + 1:]
    if not hmac.compare_digest(signed[:TAG_CHARS], tag(key, payload)):
        return None
    return payload
