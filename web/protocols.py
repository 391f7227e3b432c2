"""How uvicorn speaks to our sockets: its protocol options, its httptools protocol minus a
reference cycle that outlived every WebSocket, and compression for big frames only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from websockets.extensions.base import Extension
from websockets.extensions.permessage_deflate import (
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)
from websockets.frames import CTRL_OPCODES, Frame, Opcode
from websockets.typing import ExtensionParameter

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # no httptools (uvicorn[standard] brings it): uvicorn picks its own
    HttpToolsProtocol = None  # type: ignore[assignment,misc]
try:
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
except ImportError:  # a uvicorn without it: its own WebSocket protocol, no compression
    WebSocketsSansIOProtocol = None  # type: ignore[assignment,misc]

# Compressed with zlib's fastest level: a 150 KB batch frame of 400 events took 0.10 ms
# (0.25 us per event, 51x smaller) against 0.55 ms at the default level, for 2% less.
# memLevel 5 (zlib's default is 8): as measured, about 30% faster here, and a compressor
# of about 150 KB instead of 256 KB while a message is compressed.
COMPRESS_SETTINGS = {"level": 1, "memLevel": 5}

# Bytes a client's WebSocket message may have (the protocol's own cap is on characters,
# web/ws.py); past it uvicorn closes the socket with 1009.
WS_MAX_SIZE = 256 * 1024


if HttpToolsProtocol is not None:
    class ReleasingHttpToolsProtocol(HttpToolsProtocol):  # type: ignore[misc,valid-type]
        """Lets go of its parser once the connection is the WebSocket protocol's.

        The parser calls back into the protocol (it holds six of its bound methods).
        uvicorn breaks that cycle when an HTTP connection is lost, but not when one is
        upgraded: the old protocol, its parser, the request's scope and headers (about 30
        objects per socket) waited for a full garbage collection, which with 10,000 sockets
        open paused the event loop for up to a second (docs/benchmarks.md, "Garbage")."""

        def handle_websocket_upgrade(self) -> None:
            super().handle_websocket_upgrade()
            # Nothing feeds this parser again: the transport now talks to the new protocol.
            self.parser = None


class LargeFrameDeflate(PerMessageDeflate):
    """permessage-deflate (RFC 7692) that compresses only messages of at least
    `compress_from` bytes; smaller ones go as they are, RSV1 clear, which the RFC allows.

    A live event (300-600 bytes) is sent to every socket of its owner, encoded once
    (web/wire.py): compressed, each socket would pay a compressor of its own, about 6 us, to
    save a third of a few hundred bytes. A batch frame (up to 256 KB of similar events)
    shrinks 40-50x for well under a microsecond per event. Negotiated without context
    takeover on either side, so no socket keeps a compressor or decompressor between
    messages (with takeover, each would hold one, 150 KB or more), and frames the server
    writes past this encoder (web/frame_writer.py) cannot put the client's window out of
    step."""

    def __init__(self, params: PerMessageDeflate, compress_from: int) -> None:
        super().__init__(params.remote_no_context_takeover, params.local_no_context_takeover,
                         params.remote_max_window_bits, params.local_max_window_bits,
                         params.compress_settings)
        self.compress_from = compress_from
        self._plain = False  # the message being sent goes uncompressed (its continuations too)

    def encode(self, frame: Frame) -> Frame:
        if frame.opcode in CTRL_OPCODES:
            return frame
        if frame.opcode is not Opcode.CONT:
            self._plain = len(frame.data) < self.compress_from
        return frame if self._plain else super().encode(frame)


class LargeFrameDeflateFactory(ServerPerMessageDeflateFactory):
    """Offers `LargeFrameDeflate` to clients that ask for permessage-deflate."""

    def __init__(self, compress_from: int) -> None:
        super().__init__(server_no_context_takeover=True, client_no_context_takeover=True,
                         compress_settings=COMPRESS_SETTINGS)
        self.compress_from = compress_from

    def process_request_params(
            self, params: Sequence[ExtensionParameter], accepted_extensions: Sequence[Extension],
    ) -> tuple[list[ExtensionParameter], PerMessageDeflate]:
        response, negotiated = super().process_request_params(params, accepted_extensions)
        return response, LargeFrameDeflate(negotiated, self.compress_from)


def deflate_factory(compress_from: int) -> LargeFrameDeflateFactory | None:
    """What /ws offers clients for `ws_compress_min_bytes` (0: no compression at all)."""
    return LargeFrameDeflateFactory(compress_from) if compress_from > 0 else None


# The app's lifespan state (web/app.py) names the extension factory of its sockets here.
DEFLATE_STATE = "deflate"


if WebSocketsSansIOProtocol is not None:
    class WebSocketProtocol(WebSocketsSansIOProtocol):  # type: ignore[misc,valid-type]
        """uvicorn's WebSocket protocol, offering the app's `LargeFrameDeflateFactory` and
        letting go of the handshake once it is done.

        uvicorn's own compression option compresses every message, a live event to 5,000
        sockets 5,000 times: the factory comes from the app's settings instead, through
        the lifespan state uvicorn hands every connection (so each --workers process uses
        its own)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            factory = (self.app_state or {}).get(DEFLATE_STATE)
            if factory is not None:
                self.conn.available_extensions = [factory]

        def start_keepalive(self) -> None:
            # uvicorn calls this once, when the accepted handshake's response is out; the
            # request and response it kept for it (their headers: about 20 objects per
            # socket for every full pass of the garbage collector) are of no further use.
            super().start_keepalive()
            self.request = self.response = None


def protocol_options() -> dict[str, Any]:
    """uvicorn's keyword arguments for how it speaks HTTP and WebSocket here."""
    return {
        "http": ReleasingHttpToolsProtocol if HttpToolsProtocol is not None else "auto",
        "ws": WebSocketProtocol if WebSocketsSansIOProtocol is not None else "auto",
        "ws_max_size": WS_MAX_SIZE,
        # Never uvicorn's own compression (every message): WebSocketProtocol's.
        "ws_per_message_deflate": False,
    }
