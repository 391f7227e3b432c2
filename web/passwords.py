"""Password hashing with argon2id; the async forms run off the event loop."""

from __future__ import annotations

import anyio.to_thread
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

# A syntactically valid hash to verify against when the user does not exist, so a
# missing username costs the same time as a wrong password.
_DUMMY_PASSWORD = "orderstream-no-such-user"  # noqa: S105 (not a credential)


class Passwords:
    def __init__(self, time_cost: int = 3, memory_cost_kib: int = 65536) -> None:
        self._hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_cost_kib)
        self._dummy_hash: str | None = None

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

    async def hash_async(self, password: str) -> str:
        return await anyio.to_thread.run_sync(self.hash, password)

    async def verify_async(self, password_hash: str | None, password: str) -> bool:
        return await anyio.to_thread.run_sync(self.verify, password_hash, password)
