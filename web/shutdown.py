"""On SIGTERM/SIGINT, close every WebSocket with 1001 (going away) before uvicorn shuts down.

uvicorn's own shutdown would close them with 1012 after the fact; a client told
1001 knows the server is leaving and reconnects (to another worker, or later).
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from types import FrameType

from web.hub import Hub

GOING_AWAY = 1001
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def close_sockets_on_signal(hub: Hub) -> Callable[[], None]:
    """Chain a handler in front of the current (uvicorn's) one; returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    previous = {sig: signal.getsignal(sig) for sig in _SIGNALS}

    def handler(sig: int, frame: FrameType | None) -> None:
        # Signal handlers may run in the middle of the loop's work: schedule, don't touch.
        loop.call_soon_threadsafe(hub.close_all, GOING_AWAY, "server shutting down")
        chained = previous.get(sig)
        if callable(chained):
            chained(sig, frame)

    for sig in _SIGNALS:
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore
