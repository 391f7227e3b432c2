"""`pipe_room` (web/quotes.py), as web/ws.py wires it (`send.__self__.transport`), over a real
TCP socket: how many more bytes the socket's pipe takes before quotes wait in the box. The
event loop's buffer and the kernel's unacknowledged bytes count together; a closing socket
or a kernel that cannot be asked never holds quotes back for good."""

from __future__ import annotations

import asyncio
import fcntl
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest

from web.quotes import PIPE_BYTES, pipe_room


class Endpoint(asyncio.Protocol):
    """The server's side of the socket, with an ASGI-shaped `send` bound to it as uvicorn's is."""

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    async def send(self, message: dict[str, Any]) -> None:
        pass


@pytest.fixture
async def connected() -> AsyncIterator[tuple[Endpoint, socket.socket]]:
    loop = asyncio.get_running_loop()
    made: list[Endpoint] = []

    def endpoint() -> Endpoint:
        made.append(Endpoint())
        return made[-1]

    server = await loop.create_server(endpoint, "127.0.0.1", 0)
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a reader that fills soon
    client.connect(server.sockets[0].getsockname())
    client.setblocking(False)
    async with asyncio.timeout(5):
        while not made:
            await asyncio.sleep(0.01)
    yield made[0], client
    client.close()
    server.close()


async def test_a_reader_that_stops_shuts_the_gate_and_reading_opens_it(connected):
    endpoint, client = connected
    room = pipe_room(endpoint.send)
    assert room() == PIPE_BYTES
    async with asyncio.timeout(10):
        while room() >= 0:
            endpoint.transport.write(b"x" * 1000)
            await asyncio.sleep(0.002)
    async with asyncio.timeout(10):
        while room() != PIPE_BYTES:
            try:
                while client.recv(1 << 20):
                    pass
            except BlockingIOError:
                await asyncio.sleep(0.01)
    client.close()
    async with asyncio.timeout(10):  # the peer's close reaches the transport
        while not endpoint.transport.is_closing():
            await asyncio.sleep(0.01)
    assert room() == PIPE_BYTES  # closing: quotes must not wait on it


async def test_the_loop_buffer_and_the_kernel_queue_count_together(connected, monkeypatch):
    endpoint, _ = connected
    room = pipe_room(endpoint.send)
    monkeypatch.setattr(endpoint.transport, "get_write_buffer_size", lambda: 2000)
    monkeypatch.setattr(fcntl, "ioctl", lambda fd, op, arg: struct.pack("i", 3000))
    assert room() == PIPE_BYTES - 5000  # each alone under the limit, together over it

    def fail(fd: int, op: int, arg: bytes) -> bytes:
        raise OSError(9, "EBADF")

    monkeypatch.setattr(fcntl, "ioctl", fail)
    assert room() == PIPE_BYTES - 2000  # the kernel cannot be asked: the loop's buffer alone


def test_a_send_without_a_transport_never_holds_quotes_back():
    async def send(message: dict[str, Any]) -> None:
        pass

    assert pipe_room(send)() == PIPE_BYTES
