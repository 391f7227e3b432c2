"""Refuse logins after repeated failures for the same username or client address."""

from __future__ import annotations

import time
from collections import deque

# One address may fail this many times more than one username: an office behind one
# NAT must not be locked out by a single user who forgot a password.
ADDRESS_FACTOR = 10


class LoginThrottle:
    def __init__(self, max_failures: int = 10, window_seconds: float = 300.0) -> None:
        self.max_failures = max_failures
        self.window = window_seconds
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        stamps = self._failures.setdefault(key, deque())
        while stamps and now - stamps[0] > self.window:
            stamps.popleft()
        return stamps

    def blocked(self, username: str, address: str) -> bool:
        now = time.monotonic()
        return (len(self._recent(f"u:{username.lower()}", now)) >= self.max_failures
                or len(self._recent(f"a:{address}", now)) >= self.max_failures * ADDRESS_FACTOR)

    def failed(self, username: str, address: str) -> None:
        now = time.monotonic()
        for key in (f"u:{username.lower()}", f"a:{address}"):
            self._recent(key, now).append(now)
        if len(self._failures) > 100_000:  # bound memory under a username spray
            self._failures = {k: v for k, v in self._failures.items() if self._recent(k, now)}

    def succeeded(self, username: str) -> None:
        self._failures.pop(f"u:{username.lower()}", None)
