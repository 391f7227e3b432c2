"""The bench's lean WebSocket client: the bench measures the server, not its clients.

Each client process reads its sockets with one asyncio Protocol per socket (the handshake,
offering permessage-deflate as browsers do unless told not to, the `subscribe` frame, and
frame parsing on raw bytes, answering the server's pings), with no task per socket, and
takes each event's latency from the `ts` in its payload to the moment its bytes arrived.
With websockets' client (one reader task per socket) and the close of all 10,000 sockets
inside the window, the same server build measured 94 us of CPU per frame and p99 397 ms in
the sessions scenario, against 34 us and 164 ms with these clients (back to back, 2 cores).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
import struct
import time
import zlib
from collections.abc import Callable, Coroutine
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from web.frames import event_ts

if TYPE_CHECKING:
    from cli.bench_fanout import Target

OPEN_AT_ONCE = 50  # sockets opening together, per client process
OPEN_TIMEOUT = 30.0  # seconds for one socket's handshake and `subscribed`
_SUBSCRIBE = json.dumps({"op": "subscribe", "channel": "orders"}).encode()


def _client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (RFC 6455: clients must mask); payloads here are a few bytes."""
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        header = bytes((0x80 | opcode, 0x80 | size))
    else:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class Session(asyncio.Protocol):
    """One socket: handshake, subscribe, then count order frames and keep their latency."""

    def __init__(self, target: Target, latencies: list[float],
                 subscription: bytes = _SUBSCRIBE, offer_deflate: bool = True) -> None:
        self.target = target
        self.offer_deflate = offer_deflate
        self.latencies = latencies
        self.subscription = subscription  # the text frame sent once upgraded
        self.events = 0
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self._buffer = b""
        self._upgraded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        parts = urlsplit(self.target.url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        key = base64.b64encode(os.urandom(16)).decode()
        headers = "".join(f"{name}: {value}\r\n" for name, value in self.target.headers.items())
        # As a browser does, unless told not to: what a socket with compression negotiated
        # costs the server.
        deflate = "Sec-WebSocket-Extensions: permessage-deflate\r\n" if self.offer_deflate else ""
        self.transport.write(
            f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n{deflate}"
            f"Sec-WebSocket-Version: 13\r\n{headers}\r\n".encode())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed while opening: {exc}"))

    def data_received(self, data: bytes) -> None:
        received = time.time() * 1000
        buffer = self._buffer + data if self._buffer else data
        if not self._upgraded:
            head, found, buffer = buffer.partition(b"\r\n\r\n")
            if not found:
                self._buffer = head
                return
            if b" 101 " not in head.split(b"\r\n", 1)[0]:
                self.opened.set_exception(ConnectionError(head.split(b"\r\n", 1)[0].decode()))
                return
            self._upgraded = True
            if self.target.subscribe:
                self.transport.write(  # type: ignore[union-attr]
                    _client_frame(0x1, self.subscription))
            else:
                self.opened.set_result(None)
        start, end = 0, len(buffer)
        while end - start >= 2:
            opcode, size = buffer[start] & 0x0F, buffer[start + 1] & 0x7F
            compressed = buffer[start] & 0x40  # RSV1: permessage-deflate, no context takeover
            at = start + 2
            if size == 126:
                if end - at < 2:
                    break
                (size,) = struct.unpack_from("!H", buffer, at)
                at += 2
            elif size == 127:
                if end - at < 8:
                    break
                (size,) = struct.unpack_from("!Q", buffer, at)
                at += 8
            if end - at < size:
                break
            payload = buffer[at:at + size]
            start = at + size
            if compressed:
                payload = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")
            if opcode == 0x1:
                self._text(payload.decode(), received)
            elif opcode == 0x9:  # the server's keepalive
                self.transport.write(_client_frame(0xA, payload))  # type: ignore[union-attr]
        self._buffer = buffer[start:]

    def _text(self, text: str, received: float) -> None:
        ts = event_ts(text)
        if ts is not None:
            self.latencies.append(received - ts)
            self.events += 1
        elif not self.opened.done() and '"subscribed"' in text:
            self.opened.set_result(None)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            if self._upgraded:
                self.transport.write(_client_frame(0x8, struct.pack("!H", 1000)))
            self.transport.close()


async def open_session(target: Target, make: Callable[[], Session]) -> Session:
    """The session `make` returns, connected to `target` and opened."""
    parts = urlsplit(target.url)
    loop = asyncio.get_running_loop()
    _, session = await asyncio.wait_for(
        loop.create_connection(make, parts.hostname, parts.port), OPEN_TIMEOUT)
    try:
        await asyncio.wait_for(session.opened, OPEN_TIMEOUT)
    except BaseException:
        session.close()
        raise
    return session


async def open_sessions(makers: list[tuple[Target, Callable[[], Session]]]
                        ) -> tuple[list[Session], list[BaseException]]:
    """Each (target, make) pair opened, OPEN_AT_ONCE at a time (all at once would only
    measure the accept queue): the sessions that opened, and why the others did not."""
    opened: list[Session | BaseException] = []
    for start in range(0, len(makers), OPEN_AT_ONCE):
        opened += await asyncio.gather(
            *(open_session(target, make) for target, make in makers[start:start + OPEN_AT_ONCE]),
            return_exceptions=True)
    return ([s for s in opened if isinstance(s, Session)],
            [s for s in opened if isinstance(s, BaseException)])


def run_client(client: Coroutine[Any, Any, None]) -> None:
    """Run a client process's coroutine on uvloop, or asyncio's own loop without it (which
    reads the sockets too, at a higher cost)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(client)
    else:
        uvloop.run(client)


async def _client(pipe: Connection, targets: list[Target], offer_deflate: bool) -> None:
    latencies: list[float] = []
    sessions, failed = await open_sessions(
        [(t, functools.partial(Session, t, latencies, offer_deflate=offer_deflate))
         for t in targets])
    pipe.send(("ready", len(failed)))
    loop = asyncio.get_running_loop()
    expected, timeout = await loop.run_in_executor(None, pipe.recv)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(  # noqa: ASYNC110 (the readers are callbacks)
            s.events < expected[s.target.owner] for s in sessions):
        await asyncio.sleep(0.01)
    pipe.send((sum(s.events for s in sessions), latencies))
    await loop.run_in_executor(None, pipe.recv)  # closed only once the server's CPU is read
    for session in sessions:
        session.close()


def client_main(pipe: Connection, targets: list[Target], offer_deflate: bool = True) -> None:
    """A client process (cli/bench_fanout.py `spawn_clients`): open `targets`, say "ready"
    with the failures, count events until told what each owner committed, send the count
    and the latencies, and close once told to."""
    run_client(_client(pipe, targets, offer_deflate))
