"""A TCP proxy in front of PostgreSQL that a test can take down (the port refuses
connections and every proxied connection is reset), or stall (a network that drops every
packet: connections open but nothing gets through), and bring back up, on the same port."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from concurrent.futures import Future
from typing import Any


class TcpProxy:
    """Forwards 127.0.0.1:<port> to upstream (host, port), or to a Unix socket (the
    embedded server listens on one only), in a thread of its own so the test's blocking
    calls never stall it."""

    def __init__(self, upstream_host: str, upstream_port: int,
                 unix_socket: str | None = None) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.unix_socket = unix_socket
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port: int = sock.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = self._call(self._event())

    @staticmethod
    async def _event() -> asyncio.Event:
        event = asyncio.Event()
        event.set()
        return event

    def _call(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(10)

    def up(self) -> None:
        """Accept and forward connections (after down() or stall(): the stalled ones are
        reset, as a network that comes back finds their peers gave up)."""
        self._call(self._down())
        self._call(self._up())

    def stall(self) -> None:
        """Keep accepting connections, forward nothing more on any of them."""
        self._loop.call_soon_threadsafe(self._flowing.clear)

    def down(self) -> None:
        """Refuse new connections and reset the open ones."""
        self._call(self._down())

    def close(self) -> None:
        self.down()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _up(self) -> None:
        self._flowing.set()
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port,
                                                      reuse_address=True)

    async def _down(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        if server is not None:
            await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        await self._flowing.wait()
        try:
            if self.unix_socket is not None:
                up_reader, up_writer = await asyncio.open_unix_connection(self.unix_socket)
            else:
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                await self._flowing.wait()
                if writer.transport.is_closing():
                    break
                writer.write(data)
                await writer.drain()
        writer.transport.abort()
        self._writers.discard(writer)
