"""A WebSocket client on a bare socket that reads only when told to: a client that stops
reading, as the server sees it."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
from typing import Any

from tests.conftest import ServerProcess


class RawClient:
    """A WebSocket client on a bare socket with a tiny receive buffer, so the server's
    writes back up at once when it does not read (a library client would keep buffering).
    It reads only when told to."""

    def __init__(self, server: ServerProcess, token: str) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", server.port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {token}\r\n\r\n".encode())
        self.buffer = bytearray()
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self.sock.recv(1024)
        head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        assert b" 101 " in head.split(b"\r\n")[0], head
        self.buffer = bytearray(rest)
        # When a list: the bytes of every data frame read, header included, as they came.
        self.wire: list[bytes] | None = None

    def send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        if len(payload) < 126:
            header = bytes([0x80 | opcode, 0x80 | len(payload)])
        else:
            header = bytes([0x80 | opcode, 0x80 | 126]) + struct.pack("!H", len(payload))
        self.sock.sendall(header + mask + masked)

    def send_json(self, message: dict[str, Any]) -> None:
        self.send(0x1, json.dumps(message).encode())

    def _take(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.buffer += chunk
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    def recv_text(self) -> str:
        """The next text message (blocking), answering pings on the way."""
        parts: list[bytes] = []
        while True:
            head = self._take(2)
            b0, b1 = head
            opcode, length = b0 & 0x0F, b1 & 0x7F
            assert not b1 & 0x80, "server frames are not masked"
            if length == 126:
                extended = self._take(2)
                (length,) = struct.unpack("!H", extended)
                head += extended
            elif length == 127:
                extended = self._take(8)
                (length,) = struct.unpack("!Q", extended)
                head += extended
            payload = self._take(length)
            if self.wire is not None and opcode in (0x0, 0x1, 0x2):
                self.wire.append(head + payload)
            if opcode == 0x9:
                self.send(0xA, payload)
                continue
            if opcode == 0xA:
                continue
            if opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                raise ConnectionError(f"closed by the server: {code} {payload[2:]!r}")
            parts.append(payload)
            if b0 & 0x80:
                return b"".join(parts).decode()

    def close(self) -> None:
        self.sock.close()
