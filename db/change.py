"""An order change as the change log stores it and the stream carries it, and a page of
them as one read of the log returns it: plain data, shared by db/ and the hub."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from db.position import Position, Snapshot
from db.rights import Rights


class ResyncReason:
    """Every reason a `resync` frame can give: only when the log cannot replay a gap."""

    TRUNCATED = "orders truncated"  # TRUNCATE orders: the log cannot say what vanished
    EXPIRED = "cursor expired"  # the position is older than the log's retention
    FORGED = "forged notification"  # a NOTIFY no writer sent moved the stream's position


RESYNC_REASONS = frozenset({ResyncReason.TRUNCATED, ResyncReason.EXPIRED, ResyncReason.FORGED})


class Change(NamedTuple):
    """(A NamedTuple: the listener makes one per change read, and a tuple is the cheapest
    immutable record Python has.)"""

    seq: int
    xid: int
    owner_id: int
    # Set when an update moved the order away from this owner.
    old_owner_id: int | None
    frame: str  # the event frame from the trigger, without its cursor


@dataclass(frozen=True)
class Page:
    """What one read found: changes in delivery order, read in `snapshot`. `complete`:
    nothing else uncovered was visible in it. `expired`: the log no longer reaches back to
    the position (retention, TRUNCATE, a lost log, another generation), so nothing was
    read. `generation`: the log's when it was read."""

    changes: list[Change]
    snapshot: Snapshot
    complete: bool
    expired: bool = False
    rights: Rights | None = None
    generation: int = 0

    def positions(self, start: Position) -> list[Position]:
        """The position after each change, starting from `start`."""
        out = []
        position = start
        for change in self.changes:
            position = position.after_read(change.xid, change.seq, self.snapshot)
            out.append(position)
        return out

    def end(self, start: Position) -> Position:
        """The position once the whole page is delivered. (From its last change alone:
        a read in (xid, seq) order covers every visible change below it.)"""
        if self.expired:
            # Whoever reads this page is sent `resync`: it starts again from the snapshot,
            # in the log's generation. Nothing of `start` is kept: it may name xids of a
            # lost log (or another database) that this one has yet to hand out, and
            # covering those would skip their changes once they come.
            return Position(generation=self.generation).merge(self.snapshot)
        position = start
        if self.changes:
            last = self.changes[-1]
            position = start.after_read(last.xid, last.seq, self.snapshot)
        if self.complete:
            position = position.merge(self.snapshot)
        return position
