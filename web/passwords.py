"""Password hashing with argon2id; the async forms run off the event loop."""

from __future__ import annotations

import os

import anyio
import anyio.to_thread
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

# A syntactically valid hash to verify against when the user does not exist, so a
# missing username costs the same time as a wrong password.
_DUMMY_PASSWORD = "orderstream-no-such-user"  # noqa: S105 (not a credential)


def cpu_count() -> int:
    """CPUs this process may run on (its affinity, not the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


class Passwords:
    """argon2id with the given cost. The async forms compute at most `concurrency` hashes
    at once (0: one per CPU), each in a worker thread: every hash holds `memory_cost_kib`
    while it runs, so this bounds the memory a login flood costs; the rest wait their turn."""

    def __init__(self, time_cost: int = 3, memory_cost_kib: int = 65536,
                 concurrency: int = 0) -> None:
        self._hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_cost_kib)
        self._dummy_hash: str | None = None
        self.concurrency = concurrency if concurrency > 0 else cpu_count()
        self._limiter: anyio.CapacityLimiter | None = None  # made in the event loop

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, password_hash: str | None, password: str) -> bool:
        if password_hash is None:
            if self._dummy_hash is None:
                self._dummy_hash = self._hasher.hash(_DUMMY_PASSWORD)
            password_hash = self._dummy_hash
            password = password + "\x00"  # never matches the dummy
        try:
            return self._hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    def _threads(self) -> anyio.CapacityLimiter:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.concurrency)
        return self._limiter

    async def hash_async(self, password: str) -> str:
        return await anyio.to_thread.run_sync(self.hash, password, limiter=self._threads())

    async def verify_async(self, password_hash: str | None, password: str) -> bool:
        return await anyio.to_thread.run_sync(self.verify, password_hash, password,
                                              limiter=self._threads())
