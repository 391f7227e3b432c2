"""Where a stream of order events stands, and the cursor that names it.

NOTIFY delivers in commit order, but `seq` and transaction ids are assigned
before commit, so neither alone says what a client has seen. A position is:

- a watermark W: every transaction below it has finished, so all of its
  committed events were delivered;
- the transactions at or above W whose events were all delivered, as ranges;
- the transaction being delivered, and the seq of its last event delivered
  (one transaction's events arrive together, in seq order).

Replaying the committed changes a position does not cover, in (xid, seq) order,
yields exactly what was missed, however transactions interleave. The cursor is
the position as text: "W", "W:a-b,c", and ";x.s" for the transaction under way.
"""

from __future__ import annotations

import bisect

# Past this many ranges the cursor says "W:*" (the set is not named): a resume from it
# replays everything from W, so it may repeat events, never lose one.
MAX_RANGES = 64
# Past this many ranges held in memory (a long transaction holding the watermark back)
# they are forgotten until the watermark passes them.
MAX_HELD_RANGES = 10_000
MAX_XID = 2**63 - 1


class CursorError(ValueError):
    """A cursor that is not one this server hands out."""


class Position:
    def __init__(self, watermark: int = 0, complete: bool = True) -> None:
        self.watermark = watermark
        # Sorted, disjoint, non-adjacent [low, high] ranges of finished transactions >= W.
        self._lows: list[int] = []
        self._highs: list[int] = []
        # The transaction under way: (xid, seq of its last delivered event).
        self.current: tuple[int, int] | None = None
        # Transactions up to here may have been delivered but were forgotten: covers() errs
        # towards "not covered" for them, so a replay repeats rather than loses.
        self._forgotten_upto: int | None = None if complete else watermark
        self._cursor: str | None = None

    @property
    def complete(self) -> bool:
        return self._forgotten_upto is None

    def copy(self) -> Position:
        clone = Position(self.watermark)
        clone._lows, clone._highs = list(self._lows), list(self._highs)
        clone.current = self.current
        clone._forgotten_upto = self._forgotten_upto
        return clone

    def _finished(self, xid: int) -> bool:
        if xid < self.watermark:
            return True
        if self._forgotten_upto is not None and xid <= self._forgotten_upto:
            return False
        index = bisect.bisect_right(self._lows, xid) - 1
        return index >= 0 and xid <= self._highs[index]

    def covers(self, xid: int, seq: int) -> bool:
        """Whether the event `seq` of transaction `xid` was delivered."""
        if self.current is not None and xid == self.current[0]:
            return seq <= self.current[1]
        return self._finished(xid)

    def _add(self, xid: int) -> None:
        if xid < self.watermark or self._finished(xid):
            return
        lows, highs = self._lows, self._highs
        index = bisect.bisect_right(lows, xid)  # ranges[index - 1] starts at or before xid
        joins_left = index > 0 and highs[index - 1] + 1 == xid
        joins_right = index < len(lows) and lows[index] - 1 == xid
        if joins_left and joins_right:
            highs[index - 1] = highs[index]
            del lows[index], highs[index]
        elif joins_left:
            highs[index - 1] = xid
        elif joins_right:
            lows[index] = xid
        else:
            lows.insert(index, xid)
            highs.insert(index, xid)
            if len(lows) > MAX_HELD_RANGES:
                self._forgotten_upto = max(self._forgotten_upto or 0, highs[-1])
                self._lows, self._highs = [], []
        self._cursor = None

    def advance(self, xid: int, seq: int, watermark: int) -> None:
        """Record that event `seq` of transaction `xid` was delivered, and that every
        transaction below `watermark` has finished."""
        if self.current is not None and self.current[0] != xid:
            self._add(self.current[0])  # the previous transaction is complete
        self.current = (xid, seq)
        self._cursor = None
        if watermark > self.watermark:
            self.watermark = watermark
            cut = bisect.bisect_left(self._highs, watermark)
            del self._lows[:cut], self._highs[:cut]
            if self._lows and self._lows[0] < watermark:
                self._lows[0] = watermark
            if self._forgotten_upto is not None and watermark > self._forgotten_upto:
                self._forgotten_upto = None

    def highest(self) -> int:
        """No transaction above this one is covered."""
        candidates = [self.watermark - 1]
        if self._highs:
            candidates.append(self._highs[-1])
        if self.current is not None:
            candidates.append(self.current[0])
        return max(candidates)

    def finished_ranges(self) -> list[tuple[int, int]]:
        """The finished transactions at or above the watermark (empty if forgotten)."""
        return list(zip(self._lows, self._highs, strict=True)) if self.complete else []

    def cursor(self) -> str:
        if self._cursor is None:
            self._cursor = self._encode()
        return self._cursor

    def _encode(self) -> str:
        text = str(self.watermark)
        if not self.complete or len(self._lows) > MAX_RANGES:
            text += ":*"
        elif self._lows:
            text += ":" + ",".join(str(a) if a == b else f"{a}-{b}"
                                   for a, b in zip(self._lows, self._highs, strict=True))
        if self.current is not None and self.current[0] >= self.watermark:
            text += f";{self.current[0]}.{self.current[1]}"
        return text

    @classmethod
    def parse(cls, cursor: object) -> Position:
        if isinstance(cursor, int) and not isinstance(cursor, bool):
            cursor = str(cursor)
        if not isinstance(cursor, str) or not 0 < len(cursor) <= 4096:
            raise CursorError(f"cursor must be a string from an order event, got {cursor!r}")
        body, _, current = cursor.partition(";")
        head, _, tail = body.partition(":")
        try:
            watermark = _number(head)
            position = cls(watermark, complete=tail != "*")
            if tail and tail != "*":
                parts = tail.split(",")
                if len(parts) > MAX_RANGES:
                    raise ValueError("too many ranges")
                for part in parts:
                    low, _, high = part.partition("-")
                    a, b = _number(low), _number(high or low)
                    if not watermark <= a <= b:
                        raise ValueError(part)
                    if position._lows and a <= position._highs[-1] + 1:
                        raise ValueError(part)  # ranges come sorted and apart
                    position._lows.append(a)
                    position._highs.append(b)
            if current:
                xid, dot, seq = current.partition(".")
                if not dot:
                    raise ValueError(current)
                position.current = (_number(xid), _number(seq))
        except ValueError:
            raise CursorError(f"not a cursor: {cursor!r}") from None
        return position


def _number(text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 19 or int(text) > MAX_XID:
        raise ValueError(text)
    return int(text)


def with_cursor(frame: str, cursor: str) -> str:
    """Append the cursor to an event frame from the trigger (a JSON object without one)."""
    return f'{frame[:-1]}, "cursor" : "{cursor}"}}'
