"""Refuse logins after repeated failures for the same username or client address.

An attempt is reserved before its password is checked: attempts still being checked
count as failures until they end, so 40 guesses sent at once for one username meet the
limit of 10 as surely as 40 sent one after another, and at most 10 reach the hash.
"""

from __future__ import annotations

import math
import time
from collections import deque

# One address may fail this many times more than one username: an office behind one
# NAT must not be locked out by a single user who forgot a password.
ADDRESS_FACTOR = 10


class LoginAttempt:
    """A reserved try: end it with failed() or succeeded(); release() (idempotent, for a
    `finally`) gives the reservation back when the check never happened."""

    def __init__(self, throttle: LoginThrottle, keys: tuple[str, str]) -> None:
        self._throttle = throttle
        self._keys = keys
        self._open = True

    def failed(self) -> None:
        if self._end():
            now = time.monotonic()
            for key in self._keys:
                self._throttle._recent(key, now).append(now)
            self._throttle._trim(now)

    def succeeded(self) -> None:
        if self._end():
            self._throttle._failures.pop(self._keys[0], None)

    def release(self) -> None:
        self._end()

    def _end(self) -> bool:
        if not self._open:
            return False
        self._open = False
        pending = self._throttle._pending
        for key in self._keys:
            pending[key] -= 1
            if not pending[key]:
                del pending[key]
        return True


class LoginThrottle:
    def __init__(self, max_failures: int = 10, window_seconds: float = 300.0) -> None:
        self.max_failures = max_failures
        self.window = window_seconds
        self._failures: dict[str, deque[float]] = {}
        self._pending: dict[str, int] = {}  # attempts reserved and not yet ended, per key

    def _recent(self, key: str, now: float) -> deque[float]:
        stamps = self._failures.setdefault(key, deque())
        while stamps and now - stamps[0] > self.window:
            stamps.popleft()
        return stamps

    def _trim(self, now: float) -> None:
        if len(self._failures) > 100_000:  # bound memory under a username spray
            self._failures = {k: v for k, v in self._failures.items() if self._recent(k, now)}

    @staticmethod
    def _keys(username: str, address: str) -> tuple[str, str]:
        return f"u:{username.lower()}", f"a:{address}"

    def reserve(self, username: str, address: str) -> LoginAttempt | None:
        """A reserved attempt, or None when failures (ended or still being checked) for
        this username or address have reached the limit."""
        now = time.monotonic()
        keys = self._keys(username, address)
        limits = (self.max_failures, self.max_failures * ADDRESS_FACTOR)
        for key, limit in zip(keys, limits, strict=True):
            if len(self._recent(key, now)) + self._pending.get(key, 0) >= limit:
                return None
        for key in keys:
            self._pending[key] = self._pending.get(key, 0) + 1
        return LoginAttempt(self, keys)

    def retry_after(self, username: str, address: str) -> int:
        """Seconds until a refused attempt may be tried again: until the oldest failure
        counted against it leaves the window (1 when attempts still being checked fill it)."""
        now = time.monotonic()
        wait = 1.0
        limits = (self.max_failures, self.max_failures * ADDRESS_FACTOR)
        for key, limit in zip(self._keys(username, address), limits, strict=True):
            stamps = self._recent(key, now)
            if stamps and len(stamps) + self._pending.get(key, 0) >= limit:
                wait = max(wait, self.window - (now - stamps[0]))
        return math.ceil(wait)
