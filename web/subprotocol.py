"""WebSocket subprotocols: `orderstream.v1`, and a bearer token offered as `bearer.<token>`
by pages that cannot set an Authorization header (a browser's WebSocket cannot).

A third-party page connects with
`new WebSocket(url, ["orderstream.v1", "bearer." + token])`; the server answers with
`orderstream.v1` only, so the token is never echoed. Origin is checked as for any socket.
"""

from __future__ import annotations

from starlette.types import Scope

SUBPROTOCOL = "orderstream.v1"
BEARER_PREFIX = "bearer."


def offered(scope: Scope) -> list[str]:
    """The subprotocols the client offered (Sec-WebSocket-Protocol), in its order."""
    return [p.strip() for p in scope.get("subprotocols") or [] if isinstance(p, str)]


def bearer_token(scope: Scope) -> str | None:
    """The token offered as `bearer.<token>` on a WebSocket handshake, or None."""
    if scope.get("type") != "websocket":
        return None
    for protocol in offered(scope):
        if protocol.startswith(BEARER_PREFIX):
            return protocol[len(BEARER_PREFIX):]
    return None


def chosen_subprotocol(scope: Scope) -> str | None:
    """The subprotocol to accept with: `orderstream.v1` when offered, else none."""
    return SUBPROTOCOL if SUBPROTOCOL in offered(scope) else None


def token_without_subprotocol(scope: Scope) -> bool:
    """A token offered without `orderstream.v1`: refused, since the server must answer with
    a subprotocol the client offered that is not the token (a browser drops a socket whose
    answer names none of its offers)."""
    return bearer_token(scope) is not None and SUBPROTOCOL not in offered(scope)
