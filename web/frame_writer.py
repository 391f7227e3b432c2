"""Writes one socket's text frames, encoded once per event (web/wire.py), past the per-frame
machinery of uvicorn's websockets (sans-I/O) protocol.

Two ways in:
- `await write(frames)`: the socket's sender task writes every frame it took from the queue
  with one transport write (one write() system call per frame was over half the server's
  CPU at 50,000 frames/s: py-spy, `bench --fanout`);
- `offer(frame)`: the hub hands a live event over while the sender waits on an empty queue;
  the frames offered in one turn of the event loop go out in one write when the `Flusher`
  runs, after the burst, so no task wakes per socket per event (py-spy, 10,000 sessions:
  the wake-up, `Event.set` to the sender's next `get_events`, was a third of the server).

With permessage-deflate negotiated (web/protocols.py), frames below its size still go this
way, uncompressed; bigger ones go through uvicorn's send, which compresses them. Anywhere
else (another server, another extension), one ASGI send per frame, no offers.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

from web.metrics import SAMPLER
from web.protocols import LargeFrameDeflate
from web.subscriber import Counters
from web.wire import frame_size, text_frame

try:
    from uvicorn.protocols.utils import ClientDisconnected
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    from websockets.protocol import State
except ImportError:  # another server, or a uvicorn without that protocol: plain sends
    WebSocketsSansIOProtocol = None  # type: ignore[assignment,misc]

log = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]
_PROTOCOL_ATTRIBUTES = ("conn", "transport", "writable", "disconnected", "handshake_complete",
                        "close_sent", "initial_response")

class Flusher:
    """The sockets with offered frames, written together once per turn of the event loop:
    after the listener has published everything that arrived together."""

    def __init__(self) -> None:
        self._dirty: list[FrameWriter] = []

    def add(self, writer: FrameWriter) -> None:
        if not self._dirty:
            asyncio.get_running_loop().call_soon(self.flush)
        self._dirty.append(writer)

    def flush(self) -> None:
        writers, self._dirty = self._dirty, []
        newest = None
        for writer in writers:
            try:
                newest = writer.flush() or newest
            except Exception:  # that socket's trouble; every other socket's frames go out
                log.exception("a socket failed a write")
                writer.failed()
        if newest is not None:  # offers are live events: their age is the latency
            SAMPLER.sample(newest)


class FrameWriter:
    """`await write(frames)` sends each text as a frame of its own, in order; `offer(frame)`
    takes one for the next flush, if the socket can take it now."""

    def __init__(self, send: Send, flusher: Flusher | None = None,
                 counters: Counters | None = None,
                 on_failure: Callable[[], None] | None = None) -> None:
        self._send = send
        # Called when a flush failed: the frames it held are lost, so the socket must not
        # go on as if they had been sent.
        self._on_failure = on_failure
        protocol = getattr(send, "__self__", None)
        # What this relies on of uvicorn's protocol: without any of it, plain sends.
        usable = (WebSocketsSansIOProtocol is not None
                  and isinstance(protocol, WebSocketsSansIOProtocol)
                  and all(hasattr(protocol, name) for name in _PROTOCOL_ATTRIBUTES))
        extensions = getattr(protocol.conn, "extensions", None) if usable else None
        # Frames of this many bytes or more are compressed, so they go through uvicorn's
        # send; None: none is. Any other extension changes every frame's bytes: plain sends.
        self._compress_from: int | None = None
        # The same limit for encoded frames (header and payload): one len() per offer.
        self._compress_frames_from = math.inf
        if extensions and len(extensions) == 1 and isinstance(extensions[0], LargeFrameDeflate):
            self._compress_from = extensions[0].compress_from
            self._compress_frames_from = frame_size(self._compress_from)
        elif extensions is None or extensions:
            usable = False
        self._protocol = protocol if usable else None
        self._flusher = flusher if usable else None
        self._counters = counters if counters is not None else Counters()
        # What offer() reads per frame, kept here: reading the protocol's state per offer
        # (handshake, close, connection) was 9% of a burst to 10,000 sockets (py-spy).
        self._writable = protocol.writable if usable else asyncio.Event()
        self._transport = protocol.transport if usable else None
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._pending_text: str | None = None

    @property
    def takes_offers(self) -> bool:
        """Whether `offer` can ever take a frame (else every frame goes through `write`)."""
        return self._flusher is not None

    def offer(self, frame: str, most_pending: int) -> bool:
        """Take `frame` for the next flush if the transport is not paused and at most
        `most_pending` bytes were offered before it: False to leave it to the queue (and its
        byte budget) and the sender. A socket closed meanwhile takes it too; the flush drops
        it."""
        if self._pending_bytes > most_pending or not self._writable.is_set():
            return False
        flusher = self._flusher
        if flusher is None:
            return False
        data = text_frame(frame)
        if len(data) >= self._compress_frames_from:
            return False  # the sender sends it, compressed
        if not self._pending:
            flusher.add(self)
        self._pending.append(data)
        self._pending_bytes += len(data)
        self._pending_text = frame
        return True

    def flush(self) -> str | None:
        """Write the offered frames in one write; the text of the last (None if none). The
        sender calls this before anything it took from the queue: offers came first."""
        pending = self._pending
        if not pending:
            return None
        count = len(pending)
        data = pending[0] if count == 1 else b"".join(pending)
        pending.clear()  # the same list again: no new object per socket per flush for the GC
        self._pending_bytes = 0
        # Once accepted, a socket stops taking frames by sending a close (our close, a
        # failed keepalive, a protocol error) or by closing its transport (the peer's close
        # answered, the connection lost): nothing may follow a close frame.
        transport = self._transport
        if transport is not None and not transport.is_closing() and not self._protocol.close_sent:
            transport.write(data)
            # Counted as written: frames dropped for a closed socket were never sent.
            self._counters.frames_sent += count
        return self._pending_text

    def failed(self) -> None:
        """A flush of this socket's offered frames raised: they are gone."""
        self._pending.clear()
        self._pending_bytes = 0
        if self._on_failure is not None:
            self._on_failure()

    async def write(self, frames: list[str]) -> None:
        protocol = self._protocol
        if protocol is None:
            for frame in frames:
                await self._send({"type": "websocket.send", "text": frame})
            return
        compress_from = self._compress_from
        if compress_from is None:
            await self._write_raw(frames[0], b"".join(map(text_frame, frames)))
            return
        # In order: each run of small frames in one write, each big one compressed. Each
        # frame encoded once (a text of compress_from characters has as many bytes or more).
        run: list[bytes] = []
        first = ""
        for frame in frames:
            if len(frame) < compress_from:
                data = text_frame(frame)
                if len(data) < self._compress_frames_from:
                    if not run:
                        first = frame
                    run.append(data)
                    continue
            if run:
                await self._write_raw(first, b"".join(run))
                run = []
            await self._send({"type": "websocket.send", "text": frame})
        if run:
            await self._write_raw(first, b"".join(run))

    async def _write_raw(self, first: str, data: bytes) -> None:
        """Write `data`, encoded frames of which `first` is the first's text."""
        protocol = self._protocol
        # What uvicorn's send() does for one frame (wait while the transport is paused,
        # refuse once disconnected), then every frame into one buffer.
        await protocol.writable.wait()
        if protocol.disconnected:
            raise ClientDisconnected()
        if not self._open(protocol):  # closing or closed: let uvicorn say how
            await self._send({"type": "websocket.send", "text": first})
            return
        protocol.transport.write(data)

    @staticmethod
    def _open(protocol: Any) -> bool:
        return (protocol.handshake_complete and not protocol.close_sent
                and protocol.initial_response is None and not protocol.disconnected
                and protocol.conn.state is State.OPEN)
