"""One WebSocket's registration with the hub: who it is, what it watches, where it stands,
and its outgoing queue, bounded in bytes."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from db.position import Position
from web.frames import OwnerKey
from web.quotes import PIPE_BYTES, QuoteBox

# Queued after everything else to make the sender close the socket.
CLOSE = "\x00close"
# Per queued frame, beside its text: the str object and the deque slot (bytes).
FRAME_OVERHEAD = 64
# While quotes wait, at most this many queued frames go out before one of them: order
# events cannot starve quotes while the pipe has room for them (while events keep it fuller
# than PIPE_BYTES, quotes wait in the box, conflated), and a `subscribed` reply still
# precedes the quotes it acks.
QUOTE_TURN = 16
# While the quote gate is shut (the socket's pipe is full), how often to look again (s).
QUOTE_GATE_RETRY = 0.01
# Bytes offered before a live event that a socket may hold for the next flush (the direct
# path, FrameWriter.offer): past it events queue and count against the session's budget.
# Quotes take it while the socket's pipe and the frames offered before them hold at most
# PIPE_BYTES (web/quotes.py).
OFFER_BYTES = 64 * 1024


class Mode(enum.Enum):
    CURRENT = "current"  # takes live events as the hub publishes them
    BEHIND = "behind"  # reads the change log from its own position
    AHEAD = "ahead"  # caught up past the hub: skips live events its position covers


@dataclass
class Counters:
    events_received: int = 0
    quotes_received: int = 0
    frames_sent: int = 0
    quotes_dropped: int = 0
    resyncs_sent: int = 0
    catch_ups: int = 0
    log_reads: int = 0


class FrameQueue:
    """A FIFO of text frames that knows its size in bytes and wakes who waits for room.
    Each frame is marked as an order event or not (events may be packed into batches).
    Beside it, the conflated quotes (web/quotes.py): at most one per instrument."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.bytes = 0
        self._frames: collections.deque[tuple[str, bool]] = collections.deque()
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self.quotes = QuoteBox()
        self._streak = 0  # frames taken while quotes waited
        # Takes a live event or quote straight to the socket (FrameWriter.offer: the frame,
        # and how many bytes offered before it the socket may hold), True if it did; set by
        # the sender. Used only while the sender waits on an empty queue (`_parked`), so
        # nothing it took can be overtaken.
        self.direct: Callable[[str, int], bool] | None = None
        self._parked = False
        # How many more bytes the socket's pipe takes (web/quotes.py pipe_room): while it is
        # negative (the pipe is full), quotes wait in the box and conflate instead of
        # queueing in the kernel.
        self.quote_room: Callable[[], int] = lambda: PIPE_BYTES

    def __len__(self) -> int:
        return len(self._frames)

    def fits(self, frame: str) -> bool:
        return self.bytes + len(frame) + FRAME_OVERHEAD <= self.budget

    def fits_events(self, size: int, count: int) -> bool:
        """Whether `count` frames of `size` characters in all fit (`fits` for each in turn)."""
        return self.bytes + size + count * FRAME_OVERHEAD <= self.budget

    def put_events(self, items: list[tuple[str, bool]], size: int) -> None:
        """Queue order events together, as `put(frame, event=True)` for each would: `items`
        are `(frame, True)`, `size` their frames' length summed."""
        self._frames.extend(items)
        self.bytes += size + len(items) * FRAME_OVERHEAD
        self._wake()
        if self.bytes > self.budget // 2:
            self._room.clear()

    def put(self, frame: str, event: bool = False) -> None:
        self._frames.append((frame, event))
        self.bytes += len(frame) + FRAME_OVERHEAD
        self._wake()
        if self.bytes > self.budget // 2:
            self._room.clear()

    def offer(self, frame: str) -> None:
        """A live order event: straight to the socket while the sender waits on an empty
        queue and the socket takes it (no task wakes per event), else queued like `put`."""
        if self._parked and self.direct is not None and self.direct(frame, OFFER_BYTES):
            return
        self.put(frame, event=True)

    def _wake(self) -> None:
        self._parked = False  # from here the sender holds frames: offers queue behind them
        self._ready.set()

    def put_quote(self, instrument: str, version: int, frame: str) -> bool | None:
        """Hold the newest quote of `instrument` (see QuoteBox.offer). While the sender
        waits on an empty queue and the socket's pipe has room, the quote goes straight to
        the socket instead, as live order events do: no task wakes per quote per session
        (it was most of a quote's cost to the server, `bench --only quotes`)."""
        result = self.quotes.offer(instrument, version, frame)
        if result is None:
            return None
        # Parked: the box held nothing else (a quote waiting on the gate keeps the sender
        # awake), so this one overtakes nothing. The frames offered in this turn of the loop
        # are not in the pipe yet: offered, they may fill the room it has, no more.
        if self._parked and self.direct is not None:
            room = self.quote_room()
            if room >= 0 and self.direct(frame, room):
                self.quotes.take()  # sent: it was the only one
                return result
        self._wake()
        return result

    async def get(self) -> str:
        return (await self.get_events(1))[0]

    async def get_events(self, most: int, most_bytes: int = 256 * 1024) -> list[str]:
        """The next frame; or, when it is an event, it and the events that directly follow
        it, up to `most` of them and (past the first) `most_bytes` of text."""
        while True:
            if (self.quotes and (not self._frames or self._streak >= QUOTE_TURN)
                    and self.quote_room() >= 0):
                self._streak = 0
                return [self.quotes.take()]
            if self._frames:
                break
            self._ready.clear()
            if self.quotes:  # held back by the gate: look again soon
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(QUOTE_GATE_RETRY):
                        await self._ready.wait()
            else:
                self._parked = True
                try:
                    await self._ready.wait()
                finally:
                    self._parked = False
        frame, event = self._frames.popleft()
        taken = [frame]
        size = len(frame) + FRAME_OVERHEAD
        if event:
            frames = self._frames
            while (frames and frames[0][1] and len(taken) < most
                   and size + len(frames[0][0]) <= most_bytes):
                frame = frames.popleft()[0]
                taken.append(frame)
                size += len(frame) + FRAME_OVERHEAD
        if self.quotes:  # frames, not takes: one take may write hundreds of events
            self._streak += len(taken)
        self.bytes -= size
        if self.bytes <= self.budget // 2:
            self._room.set()
        return taken

    async def wait_room(self) -> None:
        """Until at most half the budget is queued."""
        await self._room.wait()

    def clear(self) -> None:
        self._frames.clear()
        self.quotes.clear()
        self.bytes = 0
        self._room.set()


@dataclass(eq=False)
class Subscriber:
    """One socket's view of the hub."""

    user_id: int
    is_staff: bool
    queue_bytes: int
    token_id: int | None = None
    web_session_id: str | None = None
    queue: FrameQueue = field(init=False)
    # Set before CLOSE is queued: how the sender closes the socket.
    closing: bool = False
    close_code: int = 1000
    close_reason: str = ""
    # The orders subscription; bumped by every change of it, so a catch-up that awaited
    # the database knows whether it still applies.
    orders_key: OwnerKey | None = None
    generation: int = 0
    mode: Mode = Mode.CURRENT
    # Its own position while BEHIND or AHEAD (when CURRENT, the hub's is its own).
    position: Position | None = None
    # While a catch-up read is out: the live events published meanwhile, as
    # (xid, seq, frame), None once they passed the budget.
    held: list[tuple[int, int, str]] | None = None
    held_bytes: int = 0
    catch_up: asyncio.Task[None] | None = None
    instruments: frozenset[str] = frozenset()
    # Bumped by every change of the quotes subscription (a snapshot read knows if it applies).
    quotes_generation: int = 0
    # Opted in with "batch": true: order events waiting together go out as one frame.
    batch: bool = False

    def __post_init__(self) -> None:
        self.queue = FrameQueue(self.queue_bytes)

    def reply(self, frame: str) -> None:
        """Queue a control frame (pong, error, subscribed...). A client that sends but never
        reads is closed once these alone pass four times the budget."""
        if self.closing:
            return
        if self.queue.bytes > 4 * self.queue.budget:
            self.close(1008, "client is not reading")
            return
        self.queue.put(frame)

    def hold(self, xid: int, seq: int, frame: str) -> None:
        if self.held is None:
            return
        self.held_bytes += len(frame) + FRAME_OVERHEAD
        if self.held_bytes > self.queue.budget:
            self.held = None  # the catch-up reads them from the log instead
        else:
            self.held.append((xid, seq, frame))

    def close(self, code: int, reason: str) -> None:
        """Have the sender close the socket after what is queued (or at once, if the queue is
        past its budget); from now on nothing more is queued."""
        if self.closing:
            return
        self.closing = True
        self.close_code, self.close_reason = code, reason
        if self.queue.bytes > self.queue.budget:
            self.queue.clear()
        self.queue.put(CLOSE)
        self.stop_catch_up()

    def stop_catch_up(self) -> None:
        task, self.catch_up = self.catch_up, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        self.held = None
