"""A change log in memory with the read semantics of db/changelog.py: a plain producer for
testing the hub without PostgreSQL (the real log is tested against PostgreSQL)."""

from __future__ import annotations

import asyncio

from db.change import Change, Page
from db.position import Position, Snapshot
from db.rights import Identities


class MemoryLog:
    """Committed changes, every one visible: reads see all transactions below `xmax`."""

    def __init__(self) -> None:
        self.changes: list[Change] = []
        self.reads = 0
        self.expired_below = 0
        self.gate: asyncio.Event | None = None  # set: reads wait for it

    def commit(self, *changes: Change) -> None:
        self.changes.extend(changes)

    def snapshot(self) -> Snapshot:
        return Snapshot(max((c.xid for c in self.changes), default=0) + 1)

    async def read(self, position: Position, owner_id: int | None = None,
                   who: Identities | None = None, max_rows: int = 1000,
                   max_bytes: int = 1 << 20) -> Page:
        if self.gate is not None:
            await self.gate.wait()
        self.reads += 1
        snapshot = self.snapshot()
        if position.xmax <= self.expired_below:
            return Page([], snapshot, complete=True, expired=True)
        mine = [c for c in self.changes
                if owner_id is None or owner_id in (c.owner_id, c.old_owner_id)]
        current = position.current
        uncovered = [c for c in mine if not position.covers(c.xid, c.seq)]
        uncovered.sort(key=lambda c: (current is None or c.xid != current[0], c.xid, c.seq))
        page: list[Change] = []
        size = 0
        for change in uncovered:
            if len(page) >= max_rows or size >= max_bytes:
                return Page(page, snapshot, complete=False)
            page.append(change)
            size += len(change.frame)
        return Page(page, snapshot, complete=True)
