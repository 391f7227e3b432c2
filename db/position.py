"""Where a stream of order events stands, and the cursor that names it.

NOTIFY delivers in commit order, but `seq` and transaction ids are assigned
before commit, so neither alone says what a client has seen. A position is a
watermark W (every transaction below it has finished, so all of its committed
events were delivered) plus the set of transaction ids at or above W that were
delivered too. Replaying "committed changes whose xid is not covered" from the
change log therefore yields exactly what was missed, however transactions
interleave. The cursor is that position as text: "W" or "W:a-b,c".
"""

from __future__ import annotations

# Past this many ranges of seen ids the cursor says "W:*" (seen set unknown): a
# resume from it replays everything from W, so it may repeat events, never lose one.
MAX_RANGES = 64
# Past this many seen ids (a long transaction holding the watermark back) the set is
# forgotten until the watermark passes the ids it held.
MAX_SEEN = 100_000


class CursorError(ValueError):
    """A cursor that is not one this server hands out."""


class Position:
    def __init__(self, watermark: int = 0, seen: set[int] | None = None,
                 complete: bool = True) -> None:
        self.watermark = watermark
        self.seen: set[int] = {x for x in (seen or set()) if x >= watermark}
        # Ids up to here may have been seen but were forgotten: covers() errs towards
        # "not covered" for them, so a replay repeats rather than loses.
        self._forgotten_upto: int | None = None if complete else watermark
        self._cursor: str | None = None

    @property
    def complete(self) -> bool:
        return self._forgotten_upto is None

    def copy(self) -> Position:
        clone = Position(self.watermark, set(self.seen))
        clone._forgotten_upto = self._forgotten_upto
        return clone

    def covers(self, xid: int) -> bool:
        return xid < self.watermark or (xid in self.seen and (
            self._forgotten_upto is None or xid > self._forgotten_upto))

    def advance(self, xid: int, watermark: int) -> None:
        """Record that the events of transaction `xid` were delivered, and that every
        transaction below `watermark` has finished."""
        if watermark > self.watermark:
            self.watermark = watermark
            self.seen = {x for x in self.seen if x >= watermark}
            if self._forgotten_upto is not None and watermark > self._forgotten_upto:
                self._forgotten_upto = None
            self._cursor = None
        if xid >= self.watermark and xid not in self.seen:
            self.seen.add(xid)
            self._cursor = None
            if len(self.seen) > MAX_SEEN:
                self._forgotten_upto = max(self.seen)
                self.seen = set()

    def cursor(self) -> str:
        if self._cursor is None:
            self._cursor = self._encode()
        return self._cursor

    def _encode(self) -> str:
        if not self.complete:
            return f"{self.watermark}:*"
        if not self.seen:
            return str(self.watermark)
        ranges: list[tuple[int, int]] = []
        for xid in sorted(self.seen):
            if ranges and xid == ranges[-1][1] + 1:
                ranges[-1] = (ranges[-1][0], xid)
            else:
                ranges.append((xid, xid))
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
            watermark = int(head)
            if watermark < 0:
                raise ValueError(head)
            if tail == "*":
                return cls(watermark, complete=False)
            seen: set[int] = set()
            for part in filter(None, tail.split(",")):
                low, _, high = part.partition("-")
                a, b = int(low), int(high or low)
                if not watermark <= a <= b or b - a > 1_000_000:
                    raise ValueError(part)
                seen.update(range(a, b + 1))
                if len(seen) > MAX_SEEN:
                    raise ValueError(part)
        except ValueError:
            raise CursorError(f"not a cursor: {cursor!r}") from None
        return cls(watermark, seen)


def with_cursor(frame: str, cursor: str) -> str:
    """Append the cursor to an event frame from the trigger (a JSON object without one)."""
    return f'{frame[:-1]}, "cursor" : "{cursor}"}}'
