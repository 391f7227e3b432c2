"""Quotes per subscriber, conflated: the newest unsent quote of each instrument, never a backlog.

A quote is worth sending only until a newer one of its instrument exists, so a subscriber
holds at most one unsent quote per instrument (`QuoteBox`): a new version replaces the
pending one, an older or equal version (a snapshot read after a newer live quote, a
duplicate) is ignored. A session that cannot keep up gets the latest quote of each
instrument when its socket drains: never a backlog, never `resync`. Order events keep
their own queue and guarantees (web/subscriber.py); the sender interleaves the two.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from db import queries
from db.text import encodable
from web.errors import shown

if TYPE_CHECKING:
    from web.ws import Protocol

MAX_INSTRUMENTS = 200
# Quotes are written only while less than this is waiting in the socket's pipe (the event
# loop's buffer plus the kernel's unacknowledged bytes), and then at most this much in all
# with the quotes offered in the same turn of the loop (web/subscriber.py). The kernel grows
# a send buffer to megabytes: without the gate a silent reader's backlog would sit there,
# not in the box.
PIPE_BYTES = 4 * 1024


class QuoteBox:
    """One subscriber's pending quotes: instrument -> frame, oldest-dirtied first, and the
    highest version offered per instrument (sent or pending)."""

    __slots__ = ("pending", "versions")

    def __init__(self) -> None:
        self.pending: dict[str, str] = {}
        self.versions: dict[str, int] = {}

    def __bool__(self) -> bool:
        return bool(self.pending)

    def offer(self, instrument: str, version: int, frame: str) -> bool | None:
        """Hold `frame` unless a version as new was offered before (None: ignored). True when
        it replaced an unsent quote (conflated), False when it was the only one pending."""
        if version <= self.versions.get(instrument, 0):
            return None
        self.versions[instrument] = version
        replaced = instrument in self.pending
        if replaced:
            del self.pending[instrument]  # re-queued at the end: instruments take turns
        self.pending[instrument] = frame
        return replaced

    def take(self) -> str:
        instrument = next(iter(self.pending))
        return self.pending.pop(instrument)

    def keep_only(self, instruments: frozenset[str]) -> None:
        """Forget the instruments no longer subscribed (their versions too: subscribing
        again starts from the snapshot)."""
        for name in [i for i in self.versions if i not in instruments]:
            del self.versions[name]
            self.pending.pop(name, None)

    def clear(self) -> None:
        self.pending.clear()
        self.versions.clear()


def pipe_room(send: object) -> Callable[[], int]:
    """How many more bytes the pipe of the socket behind the ASGI `send` of the server
    (uvicorn's protocol object, which holds the transport) takes before it holds PIPE_BYTES:
    the event loop's buffer and the kernel's unacknowledged bytes together. Quotes are
    written while it is not negative. PIPE_BYTES where the pipe cannot be measured, and for
    a closing socket (whatever it is given is dropped: quotes must not wait on it)."""
    try:
        import fcntl
        import termios
    except ImportError:  # not POSIX: the pipe cannot be measured, quotes always go
        fcntl = termios = None  # type: ignore[assignment]
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    outq = getattr(termios, "TIOCOUTQ", None)
    if sock is None or outq is None or fcntl is None:
        return lambda: PIPE_BYTES
    fd = sock.fileno()
    zero = bytes(4)

    def room() -> int:
        if transport.is_closing():
            return PIPE_BYTES
        room = PIPE_BYTES - transport.get_write_buffer_size()
        if room < 0:
            return room
        try:
            (queued,) = struct.unpack("i", fcntl.ioctl(fd, outq, zero))
        except OSError:
            return room
        return room - queued

    return room


def instrument_ok(name: object) -> bool:
    """A name the instruments table could hold: PostgreSQL text takes neither NUL nor the
    lone surrogates a JSON "\\ud800" escape decodes to (the snapshot query failed on them)."""
    return isinstance(name, str) and 0 < len(name) <= 64 and "\x00" not in name and encodable(name)


def parse_instruments(value: object) -> list[str] | None:
    """The distinct instrument names of a request, sorted, or None when malformed."""
    if (not isinstance(value, list) or not 0 < len(value) <= MAX_INSTRUMENTS
            or not all(instrument_ok(i) for i in value)):
        return None
    return sorted(set(value))


async def subscribe(protocol: Protocol, message: dict[str, Any], wait_seconds: float) -> None:
    """`{"op": "subscribe", "channel": "quotes", "instruments": [...]}`: check the names
    against `instruments` (unknown ones get an `error` frame, the known ones are
    subscribed), register for live quotes, acknowledge, then offer the snapshot: the box
    keeps whichever of snapshot and live quote has the higher version."""
    wanted = parse_instruments(message.get("instruments"))
    if wanted is None:
        protocol.error("bad_request",
                       f"instruments must be a list of 1-{MAX_INSTRUMENTS} instrument names")
        return
    state = protocol.state
    known = await queries.known_instruments(state.pool, wanted)
    unknown = [i for i in wanted if i not in known]
    if unknown:
        names = ", ".join(map(shown, unknown[:10]))
        if len(unknown) > 10:
            names += f" and {len(unknown) - 10} more"
        protocol.error("unknown_instrument",
                       f"unknown instruments: {names}; known ones are rows of `instruments`")
    if not known:
        return
    if not await state.listener.wait_listening(wait_seconds):
        protocol.error("unavailable", "the server is not receiving database events; retry")
        return
    sub = protocol.sub
    if sub.closing:
        return
    instruments = frozenset(known)
    # Acknowledge, then register, with no await between: every quote published from here on
    # is held for this subscriber; the snapshot read after it fills in the quieter ones.
    ack: dict[str, Any] = {"type": "subscribed", "channel": "quotes",
                           "instruments": sorted(instruments)}
    if unknown:
        ack["unknown"] = unknown
    protocol.reply(json.dumps(ack))
    protocol.hub.subscribe_quotes(sub, instruments)
    generation = sub.quotes_generation
    snapshot = await queries.quote_frames(state.pool, sorted(instruments))
    if sub.quotes_generation != generation:
        return  # unsubscribed or subscribed again meanwhile: that one's snapshot counts
    for instrument, version, frame in snapshot:
        sub.queue.put_quote(instrument, version, frame)
