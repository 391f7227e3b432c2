"""Where a stream of order events stands, and the cursor that names it.

NOTIFY delivers in commit order, but `seq` and transaction ids are assigned
before commit, so neither alone says what a client has seen. A position is a
watermark W (every transaction below it has finished, so all of its committed
events were delivered) plus the transaction ids at or above W that were
delivered too. Replaying "committed changes whose xid is not covered" from the
change log therefore yields exactly what was missed, however transactions
interleave. The cursor is that position as text: "W" or "W:a-b,c".
"""

from __future__ import annotations

import bisect

# Past this many ranges of seen ids the cursor says "W:*" (seen set unknown): a
# resume from it replays everything from W, so it may repeat events, never lose one.
MAX_RANGES = 64
# Past this many seen ids (a long transaction holding the watermark back) the set is
# forgotten until the watermark passes the ids it held.
MAX_SEEN = 100_000
MAX_XID = 2**63 - 1


class CursorError(ValueError):
    """A cursor that is not one this server hands out."""


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(high, merged[-1][1]))
        else:
            merged.append((low, high))
    return merged


class Position:
    def __init__(self, watermark: int = 0, seen: set[int] | None = None,
                 complete: bool = True) -> None:
        self.watermark = watermark
        # Ids delivered by this process, one by one...
        self.seen: set[int] = {x for x in (seen or set()) if x >= watermark}
        # ...and ids a parsed cursor names, kept as sorted disjoint ranges (never expanded:
        # a client must not make the server build a set of a million ids).
        self._ranges: list[tuple[int, int]] = []
        # Ids up to here may have been seen but were forgotten: covers() errs towards
        # "not covered" for them, so a replay repeats rather than loses.
        self._forgotten_upto: int | None = None if complete else watermark
        self._cursor: str | None = None

    @property
    def complete(self) -> bool:
        return self._forgotten_upto is None

    def copy(self) -> Position:
        clone = Position(self.watermark, set(self.seen))
        clone._ranges = list(self._ranges)
        clone._forgotten_upto = self._forgotten_upto
        return clone

    def _in_ranges(self, xid: int) -> bool:
        index = bisect.bisect_right(self._ranges, (xid, MAX_XID + 1)) - 1
        return index >= 0 and self._ranges[index][0] <= xid <= self._ranges[index][1]

    def covers(self, xid: int) -> bool:
        if xid < self.watermark:
            return True
        if self._forgotten_upto is not None and xid <= self._forgotten_upto:
            return False
        return xid in self.seen or (bool(self._ranges) and self._in_ranges(xid))

    def advance(self, xid: int, watermark: int) -> None:
        """Record that the events of transaction `xid` were delivered, and that every
        transaction below `watermark` has finished."""
        if watermark > self.watermark:
            self.watermark = watermark
            self.seen = {x for x in self.seen if x >= watermark}
            self._ranges = [(max(a, watermark), b) for a, b in self._ranges if b >= watermark]
            if self._forgotten_upto is not None and watermark > self._forgotten_upto:
                self._forgotten_upto = None
            self._cursor = None
        if xid >= self.watermark and not self.covers(xid):
            self.seen.add(xid)
            self._cursor = None
            if len(self.seen) > MAX_SEEN:
                self._forgotten_upto = max(self.seen)
                self.seen = set()
                self._ranges = []

    def cursor(self) -> str:
        if self._cursor is None:
            self._cursor = self._encode()
        return self._cursor

    def _encode(self) -> str:
        if not self.complete:
            return f"{self.watermark}:*"
        ranges = _merge([(x, x) for x in self.seen] + self._ranges)
        if not ranges:
            return str(self.watermark)
        if len(ranges) > MAX_RANGES:
            return f"{self.watermark}:*"
        parts = [str(a) if a == b else f"{a}-{b}" for a, b in ranges]
        return f"{self.watermark}:{','.join(parts)}"

    @classmethod
    def parse(cls, cursor: object) -> Position:
        if isinstance(cursor, int) and not isinstance(cursor, bool):
            cursor = str(cursor)
        if not isinstance(cursor, str) or not 0 < len(cursor) <= 4096:
            raise CursorError(f"cursor must be a string from an order event, got {cursor!r}")
        head, _, tail = cursor.partition(":")
        try:
            if not head.isascii() or not head.isdigit():
                raise ValueError(head)
            watermark = int(head)
            if watermark > MAX_XID:
                raise ValueError(head)
            if tail == "*":
                return cls(watermark, complete=False)
            ranges: list[tuple[int, int]] = []
            for part in tail.split(",") if tail else []:
                low, _, high = part.partition("-")
                if not all(p.isascii() and p.isdigit() for p in (low, high or low)):
                    raise ValueError(part)
                a, b = int(low), int(high or low)
                if not watermark <= a <= b <= MAX_XID:
                    raise ValueError(part)
                ranges.append((a, b))
            if len(ranges) > MAX_RANGES:
                raise ValueError("too many ranges")
        except ValueError:
            raise CursorError(f"not a cursor: {cursor!r}") from None
        position = cls(watermark)
        position._ranges = _merge(ranges)
        return position


def with_cursor(frame: str, cursor: str) -> str:
    """Append the cursor to an event frame from the trigger (a JSON object without one)."""
    return f'{frame[:-1]}, "cursor" : "{cursor}"}}'
