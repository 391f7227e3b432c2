"""Signed notifications: the triggers send "<tag> <payload>", where the tag is the first
16 bytes of HMAC-SHA256(key, "<channel> <payload>") in hex and the key is a secret in
`notification_key` (migration 0008) that writers cannot read. Anyone who can connect may
NOTIFY; only what the triggers signed is believed."""

from __future__ import annotations

import hmac

import asyncpg

TAG_CHARS = 32  # 16 bytes in hex


async def load_key(conn: asyncpg.Connection) -> bytes:
    """The signing key (readable by the owner and the runtime role only)."""
    key = await conn.fetchval("SELECT key FROM notification_key")
    if key is None:
        raise RuntimeError("notification_key is empty: run `python server.py migrate`")
    return bytes(key)


def tag(key: bytes, channel: str, payload: str) -> str:
    """The tag the triggers compute for `payload` on `channel` (tests sign with it on
    purpose). The channel is signed too: a payload is only good where it was sent."""
    # hmac.digest: OpenSSL's one-shot HMAC, a third of hmac.new()'s time per notification.
    return hmac.digest(key, f"{channel} {payload}".encode(), "sha256")[:16].hex()


def sign(key: bytes, channel: str, payload: str) -> str:
    return f"{tag(key, channel, payload)} {payload}"


def open_signed(key: bytes, channel: str, signed: str) -> str | None:
    """The payload of a notification the triggers signed for `channel`, or None."""
    if len(signed) <= TAG_CHARS or signed[TAG_CHARS] != " ":
        return None
    payload = signed[TAG_CHARS + 1:]
    # As bytes: compare_digest refuses str with non-ASCII characters (a forger's choice).
    expected = tag(key, channel, payload).encode()
    if not hmac.compare_digest(signed[:TAG_CHARS].encode(), expected):
        return None
    return payload
