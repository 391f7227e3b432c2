"""How uvicorn speaks to our sockets: its protocol options, and its httptools protocol minus
a reference cycle that outlived every WebSocket."""

from __future__ import annotations

from typing import Any

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # no httptools (uvicorn[standard] brings it): uvicorn picks its own
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

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


def protocol_options() -> dict[str, Any]:
    """uvicorn's keyword arguments for how it speaks HTTP and WebSocket here."""
    return {
        "http": ReleasingHttpToolsProtocol if HttpToolsProtocol is not None else "auto",
        "ws_max_size": WS_MAX_SIZE,
        # Frames are small JSON sent at high rates on local networks: compressing each one
        # cost more CPU than sending it (py-spy, a 100,000-row UPDATE to a staff session).
        "ws_per_message_deflate": False,
    }
