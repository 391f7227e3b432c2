"""Where a consumer of order changes stands in the change log, and the cursor that names it.

Transaction ids (xids) are assigned before commit, so neither xid nor `seq` order is commit
order. A position is therefore stated the way PostgreSQL states a snapshot: the set of
transactions whose changes were all delivered.

- `xmax`: every transaction below it is covered (delivered, or wrote no orders, or rolled
  back), except those in `pending`;
- `pending`: sorted, disjoint [low, high] ranges of xids below `xmax` not yet covered
  (transactions that were still running when we learnt about their neighbours);
- `current`: the transaction under way and the `seq` of its last delivered change (a
  transaction's changes are delivered together, in seq order).

Positions grow from two facts. A writer's snapshot (the trigger sends it with each
notification) lists what had finished before the writer could commit: since NOTIFY
delivers in commit order, every committed change of those transactions was delivered
before the writer's. And a log read in a snapshot delivers every change visible in it.
So `pending` holds only transactions that were running at the last snapshot seen: an
idle `BEGIN; UPDATE ...` left open in psql is one entry for as long as it stays open,
whatever else commits around it. Positions are immutable; every step returns a new one.

Xids name transactions only within one *generation* of the change log. The log is unlogged:
a crash, a promoted standby or a restored base backup starts it empty, and may also have
lost transactions whose xids the database then hands out again. The server that recovers
the log (orderstream_change_log_recover() in db/triggers.sql) gives it a new random
generation, and a position of any other generation is expired, whatever xids it names.
Generation 0 is the log's before its first loss.

The cursor is the position as text:
"p<xmax>[~<low>-<high>,<xid>...][;<xid>.<seq>][@<generation>]", the generation in lowercase
hexadecimal and left out when it is 0 (so cursors of generation 0 read exactly as those of
releases before generations, and those still parse, as generation 0).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# A cursor names at most this many pending ranges; past it the position forgets everything
# from the first range it cannot name (a resume from it may repeat events, never lose one).
MAX_PENDING = 64
MAX_XID = 2**63 - 1

Range = tuple[int, int]


class CursorError(ValueError):
    """A cursor that is not one this server hands out: `reason`, and the `value` given
    (for the caller to show in its own terms, cut short: it may be 4 KB or an object)."""

    def __init__(self, reason: str, value: object) -> None:
        super().__init__(reason)
        self.reason = reason
        self.value = value


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a PostgreSQL snapshot says finished: every xid below `xmax` but those in `xip`."""

    xmax: int
    xip: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Snapshot:
        """From pg_snapshot's text form "xmin:xmax:xip,xip,..."."""
        _, xmax, xip = text.split(":")
        # Most snapshots list no running transaction: no generator or sort for them.
        return cls(int(xmax), tuple(sorted(map(int, xip.split(",")))) if xip else ())

    def seen_by(self, xid: int) -> Snapshot:
        """The snapshot of transaction `xid` itself: PostgreSQL leaves a transaction's own
        xid out of its snapshot's running list, but it had not finished."""
        if xid >= self.xmax or xid in self.xip:
            return self
        return Snapshot(self.xmax, tuple(sorted((*self.xip, xid))))


class Position:
    """Immutable by convention: every step returns a new one. A plain class with slots,
    not a frozen dataclass: the listener makes one per change, and a frozen dataclass's
    __init__ (object.__setattr__ per field) was a fifth of its time (py-spy).

    `generation` is the change log's (module docstring): the xids are that log's."""

    __slots__ = ("_text", "current", "generation", "pending", "xmax")

    def __init__(self, xmax: int = 0, pending: tuple[Range, ...] = (),
                 current: tuple[int, int] | None = None, generation: int = 0) -> None:
        self.xmax = xmax
        self.pending = pending
        self.current = current
        self.generation = generation
        self._text: str | None = None  # the cursor, made on first use

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Position):
            return NotImplemented
        return ((self.xmax, self.pending, self.current, self.generation)
                == (other.xmax, other.pending, other.current, other.generation))

    def __hash__(self) -> int:
        return hash((self.xmax, self.pending, self.current, self.generation))

    def __repr__(self) -> str:
        return (f"Position(xmax={self.xmax}, pending={self.pending}, current={self.current},"
                f" generation={self.generation})")

    # -- questions -------------------------------------------------------------------

    def finished(self, xid: int) -> bool:
        """Whether every change of transaction `xid` is covered."""
        if xid >= self.xmax:
            return False
        for low, high in self.pending:
            if low > xid:
                break
            if xid <= high:
                return False
        return True

    def covers(self, xid: int, seq: int) -> bool:
        """Whether change `seq` of transaction `xid` is covered."""
        current = self.current
        if current is not None and current[0] == xid:
            return seq <= current[1]
        return self.finished(xid)

    def includes(self, other: Position) -> bool:
        """Whether everything `other` covers is covered here (never for a position of
        another generation: see union)."""
        if other.current is not None and not self.covers(*other.current):
            return False
        return self.union(other) == self

    def uncovered(self) -> tuple[list[Range], int]:
        """The pending ranges and `xmax`: what a log read must look at (with `current`)."""
        return list(self.pending), self.xmax

    # -- steps -----------------------------------------------------------------------

    def after_change(self, xid: int, seq: int, snapshot: Snapshot | None = None) -> Position:
        """The position once change `seq` of transaction `xid`, written in `snapshot`, is
        delivered in commit order (the live stream)."""
        if snapshot is None and self._current_is(xid):
            # The common step, cheap.
            return Position(self.xmax, self.pending, (xid, seq), self.generation)
        position = self
        if position.current is not None and position.current[0] != xid:
            position = position.finish(position.current[0])
        if snapshot is not None:
            position = position.merge(snapshot.seen_by(xid))
        return position._with_current((xid, seq))

    def after_changes(self, xid: int, seqs: Sequence[int], snapshot: Snapshot | None = None
                      ) -> tuple[Position, list[str]]:
        """`after_change` for changes `seqs` (ascending, at least one) of transaction `xid`
        in turn: the position after the last, and the cursor after each. Past the first,
        each step moves only `current`, so every cursor is one text with its seq written
        in (a page of a bulk statement: one Position, not one per change)."""
        first = self.after_change(xid, seqs[0], snapshot)
        head, tail = first._head(), first._tail()
        cursors = [f"{head};{xid}.{seq}{tail}" for seq in seqs]
        if len(seqs) == 1:
            return first, cursors
        return Position(first.xmax, first.pending, (xid, seqs[-1]), first.generation), cursors

    def after_read(self, xid: int, seq: int, snapshot: Snapshot) -> Position:
        """The position once a log read in `snapshot`, going in (xid, seq) order, delivered
        change `seq` of transaction `xid` (and so every visible change before it)."""
        position = self
        if not position._current_is(xid):
            # Reads take the rest of the transaction under way first, then ascending xids:
            # every visible change of a transaction below `xid` has been delivered.
            if position.current is not None:
                position = position.finish(position.current[0])
            position = position.merge(snapshot, below=xid)
        return position._with_current((xid, seq))

    def finish(self, xid: int) -> Position:
        """Transaction `xid` is wholly delivered."""
        if self.finished(xid):
            return self._with_current(None) if self._current_is(xid) else self
        if xid >= self.xmax:
            pending = self.pending + (((self.xmax, xid - 1),) if xid > self.xmax else ())
            position = Position(xid + 1, pending, self.current, self.generation)
        else:
            position = Position(self.xmax, _remove(self.pending, xid), self.current,
                                self.generation)
        return position._with_current(None) if position._current_is(xid) else position._bounded()

    def merge(self, snapshot: Snapshot, below: int | None = None) -> Position:
        """Add what `snapshot` saw finished (only below xid `below`, when given)."""
        visible_upto = snapshot.xmax if below is None else min(snapshot.xmax, below)
        running = snapshot.xip
        kept: list[Range] = []
        for low, high in self.pending:
            # Still uncovered: what the snapshot saw running, and what lies past what it saw.
            for xid in running:
                if low <= xid <= min(high, visible_upto - 1):
                    kept.append((xid, xid))
            if high >= visible_upto:
                kept.append((max(low, visible_upto), high))
        xmax = self.xmax
        if visible_upto > xmax:
            kept.extend((xid, xid) for xid in running if xmax <= xid < visible_upto)
            xmax = visible_upto
        position = Position(xmax, _normalise(kept), self.current, self.generation)
        current = position.current
        if current is not None and position.finished(current[0]):
            position = position._with_current(None)
        return position._bounded()

    def union(self, other: Position) -> Position:
        """What either position covers (one partial transaction at most: another is
        dropped, which makes a resume repeat it, never lose it).

        Positions of two generations share no transaction: then it is `other`, the
        stream's (the hub's) position in every caller. Whoever holds the other generation
        was, or is about to be, sent `resync` by the change of generation itself."""
        if self.generation != other.generation:
            return other
        xmax = max(self.xmax, other.xmax)
        mine = [*self.pending, *(((self.xmax, xmax - 1),) if xmax > self.xmax else ())]
        theirs = [*other.pending, *(((other.xmax, xmax - 1),) if xmax > other.xmax else ())]
        position = Position(xmax, _normalise(_intersect(mine, theirs)), None,
                            self.generation)
        currents = [c for c in (self.current, other.current)
                    if c is not None and not position.finished(c[0])]
        if currents:
            xid = currents[0][0]
            seq = max(c[1] for c in currents if c[0] == xid)
            position = position._with_current((xid, seq))
        return position._bounded()

    # -- text ------------------------------------------------------------------------

    def cursor(self) -> str:
        if self._text is None:
            self._text = self._encode()
        return self._text

    def _encode(self) -> str:
        current = "" if self.current is None else f";{self.current[0]}.{self.current[1]}"
        return f"{self._head()}{current}{self._tail()}"

    def _head(self) -> str:
        """The cursor up to `current`: xmax and the pending ranges."""
        if not self.pending:
            return f"p{self.xmax}"
        return f"p{self.xmax}~" + ",".join(str(a) if a == b else f"{a}-{b}"
                                          for a, b in self.pending)

    def _tail(self) -> str:
        """The cursor after `current`: the generation, if not 0."""
        return f"@{self.generation:x}" if self.generation else ""

    @classmethod
    def parse(cls, cursor: object) -> Position:
        if isinstance(cursor, int) and not isinstance(cursor, bool):
            cursor = str(cursor)
        if not isinstance(cursor, str) or not 0 < len(cursor) <= 4096:
            raise CursorError("cursor must be a string from an order event, of at most 4096"
                              " characters", cursor)
        try:
            if cursor.startswith("p"):
                return cls._parse(cursor[1:])
            return cls._parse_watermark_cursor(cursor)
        except ValueError:
            raise CursorError("not a cursor", cursor) from None

    @classmethod
    def _parse(cls, text: str) -> Position:
        text, at, generation_text = text.partition("@")
        generation = _generation(generation_text) if at else 0
        body, _, current_text = text.partition(";")
        head, tilde, tail = body.partition("~")
        xmax = _number(head)
        pending = _ranges(tail) if tilde else []
        if len(pending) > MAX_PENDING or (pending and pending[-1][1] >= xmax):
            raise ValueError(text)
        return cls(xmax, tuple(pending), _current(current_text), generation)

    @classmethod
    def _parse_watermark_cursor(cls, text: str) -> Position:
        """Cursors of the previous format, "W[:a-b,c|:*][;x.s]": W and the listed finished
        ranges, stated as the same set."""
        body, _, current_text = text.partition(";")
        head, _, tail = body.partition(":")
        watermark = _number(head)
        finished = _ranges(tail) if tail and tail != "*" else []
        if len(finished) > MAX_PENDING or (finished and finished[0][0] < watermark):
            raise ValueError(text)
        xmax, pending = watermark, []
        for low, high in finished:
            if low > xmax:
                pending.append((xmax, low - 1))
            xmax = high + 1
        return cls(xmax, tuple(pending), _current(current_text))._bounded()

    # -- helpers ---------------------------------------------------------------------

    def _current_is(self, xid: int) -> bool:
        return self.current is not None and self.current[0] == xid

    def _with_current(self, current: tuple[int, int] | None) -> Position:
        return Position(self.xmax, self.pending, current, self.generation)

    def _bounded(self) -> Position:
        if len(self.pending) <= MAX_PENDING:
            return self
        # Forget coverage from the first range the cursor cannot name.
        xmax = self.pending[MAX_PENDING][0]
        current = self.current if self.current is not None and self.current[0] < xmax else None
        return Position(xmax, self.pending[:MAX_PENDING], current, self.generation)


def _number(text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 19 or int(text) > MAX_XID:
        raise ValueError(text)
    return int(text)


def _generation(text: str) -> int:
    # One text per generation: lowercase, no leading zero, and 0 is written by leaving it out.
    if not 0 < len(text) <= 16 or text[0] == "0" or text.strip("0123456789abcdef"):
        raise ValueError(text)
    value = int(text, 16)
    if value > MAX_XID:
        raise ValueError(text)
    return value


def _current(text: str) -> tuple[int, int] | None:
    if not text:
        return None
    xid, dot, seq = text.partition(".")
    if not dot:
        raise ValueError(text)
    return _number(xid), _number(seq)


def _ranges(text: str) -> list[Range]:
    ranges: list[Range] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        a, b = _number(low), _number(high or low)
        if a > b or (ranges and a <= ranges[-1][1] + 1):
            raise ValueError(part)  # ranges come sorted and apart
        ranges.append((a, b))
    return ranges


def _normalise(ranges: Iterable[Range]) -> tuple[Range, ...]:
    merged: list[list[int]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], high)
        else:
            merged.append([low, high])
    return tuple((a, b) for a, b in merged)


def _intersect(first: list[Range], second: list[Range]) -> list[Range]:
    out: list[Range] = []
    i = j = 0
    a, b = sorted(first), sorted(second)
    while i < len(a) and j < len(b):
        low, high = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if low <= high:
            out.append((low, high))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def _remove(ranges: tuple[Range, ...], xid: int) -> tuple[Range, ...]:
    out: list[Range] = []
    for low, high in ranges:
        if low <= xid <= high:
            if low < xid:
                out.append((low, xid - 1))
            if xid < high:
                out.append((xid + 1, high))
        else:
            out.append((low, high))
    return tuple(out)
