"""Signed notifications: the triggers send "<tag> <payload>", where the tag is the first
16 bytes of HMAC-SHA256(key, "<channel> <payload>") in hex and the key is a secret in
`notification_key` (migration 0008) that writers cannot read. Anyone who can connect may
NOTIFY; only what the triggers signed is believed."""

from __future__ import annotations

import hashlib
import hmac

import asyncpg

TAG_CHARS = 32  # 16 bytes in hex
_BLOCK = 64  # SHA-256's block size: HMAC's pads are one block each


class NotificationKey:
    """The key, as SHA-256 states that have already taken HMAC's inner and outer pads
    (RFC 2104), as the triggers keep them (notification_key.inner_pad, outer_pad).

    A tag copies the two states instead of keying HMAC anew: every single-row change is
    checked on the latency path, where `hmac.digest` (OpenSSL 3 looks the algorithm up on
    each call) took 42 us per notification at p50 in the server against 6 us in a warm
    loop, and the copies take half of either (docs/benchmarks.md, "Session 11")."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def tag(self, channel: str, payload: str) -> str:
        """The tag the triggers compute for `payload` on `channel` (tests sign with it on
        purpose). The channel is signed too: a payload is only good where it was sent."""
        inner = self._inner.copy()
        inner.update(f"{channel} {payload}".encode())
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()[:TAG_CHARS]

    def sign(self, channel: str, payload: str) -> str:
        return f"{self.tag(channel, payload)} {payload}"

    def open(self, channel: str, signed: str) -> str | None:
        """The payload of a notification the triggers signed for `channel`, or None."""
        if len(signed) <= TAG_CHARS or signed[TAG_CHARS] != " ":
            return None
        payload = signed[TAG_CHARS + 1:]
        # As bytes: compare_digest refuses str with non-ASCII characters (a forger's choice).
        expected = self.tag(channel, payload).encode()
        if not hmac.compare_digest(signed[:TAG_CHARS].encode(), expected):
            return None
        return payload


async def load_key(conn: asyncpg.Connection) -> NotificationKey:
    """The signing key (readable by the owner and the runtime role only)."""
    key = await conn.fetchval("SELECT key FROM notification_key")
    if key is None:
        raise RuntimeError("notification_key is empty: run `python server.py migrate`")
    return NotificationKey(bytes(key))
