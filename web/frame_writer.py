"""Writes a socket's ready text frames with one transport write: on uvicorn's websockets
(sans-I/O) protocol, each ASGI `websocket.send` is a write() system call of its own, and at
50,000 frames/s those calls were over half of the server's CPU (py-spy, `bench --fanout`).
Anywhere else, one ASGI send per frame."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

try:
    from uvicorn.protocols.utils import ClientDisconnected
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    from websockets.exceptions import InvalidState
except ImportError:  # another server, or a uvicorn without that protocol: plain sends
    WebSocketsSansIOProtocol = None  # type: ignore[assignment,misc]

Send = Callable[[dict[str, Any]], Awaitable[None]]
_PROTOCOL_ATTRIBUTES = ("conn", "transport", "writable", "disconnected", "handshake_complete",
                        "close_sent", "initial_response")


class FrameWriter:
    """`await write(frames)` sends each text as a frame of its own, in order."""

    def __init__(self, send: Send) -> None:
        self._send = send
        protocol = getattr(send, "__self__", None)
        # What write() relies on of uvicorn's protocol: without any of it, plain sends.
        usable = (WebSocketsSansIOProtocol is not None
                  and isinstance(protocol, WebSocketsSansIOProtocol)
                  and all(hasattr(protocol, name) for name in _PROTOCOL_ATTRIBUTES))
        self._protocol = protocol if usable else None

    async def write(self, frames: list[str]) -> None:
        protocol = self._protocol
        if protocol is None or len(frames) == 1 or not self._open(protocol):
            for frame in frames:
                await self._send({"type": "websocket.send", "text": frame})
            return
        # What uvicorn's send() does for one frame (wait while the transport is paused,
        # refuse once disconnected), then every frame into one buffer.
        await protocol.writable.wait()
        if protocol.disconnected:
            raise ClientDisconnected()
        if not self._open(protocol):  # closed while waiting: let uvicorn say how
            await self._send({"type": "websocket.send", "text": frames[0]})
            return
        conn = protocol.conn
        try:
            for frame in frames:
                conn.send_text(frame.encode())
        except InvalidState:
            raise ClientDisconnected() from None
        protocol.transport.write(b"".join(conn.data_to_send()))

    @staticmethod
    def _open(protocol: Any) -> bool:
        return (protocol.handshake_complete and not protocol.close_sent
                and protocol.initial_response is None and not protocol.disconnected)
