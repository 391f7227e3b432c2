"""One LISTEN connection that never loses track of what it may have missed.

The notification callback is synchronous and tiny: it puts the raw payload on a bounded
queue and returns. When the connection is lost (termination callback, or a failed health
query) it is re-established with capped exponential backoff and LISTENs again; a gap
marker (None) is queued at the moment of loss, and another when the queue overflows (the
queued notifications are then dropped): whoever reads the queue fills gaps from the log.
A reader may also take notifications as they arrive (`on_arrival`), whenever the queue is
empty: then nothing heard earlier is still waiting, and order is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import asyncpg

from db.failures import DATABASE_ERRORS
from db.pool import CONNECT_TIMEOUT_S
from db.signing import NotificationKey, load_key

log = logging.getLogger(__name__)

# A notification is (channel, payload); None marks "notifications may be missing here".
Notification = tuple[str, str] | None


class PromptConnection(asyncpg.Connection):
    """asyncpg hands each notification to its listeners with `call_soon`: a turn of the
    event loop (a poll of every socket) after it parsed it. This connection calls `prompt`
    as it parses it, inside the read, between two messages: on the single-event path
    (LISTEN callback, publish, flush) one turn of three is saved, and notifications read
    together are all published before the flush that follows them. Should asyncpg stop
    calling `_process_notification` (a private method), or call it differently, the
    listeners added with `add_listener` still get everything, a turn later.

    `prompt` runs inside asyncpg's protocol: whatever it raises is logged here, never
    raised into the parser. It is never cleared: a closed connection reads nothing more."""

    # Called as asyncpg's listeners are: (connection, pid, channel, payload).
    prompt: Callable[[object, int, str, str], None] | None = None

    def _process_notification(self, *args: Any) -> None:
        prompt = self.prompt
        if prompt is None or len(args) != 3:
            super()._process_notification(*args)  # type: ignore[misc]
            return
        try:
            prompt(self, *args)
        except Exception:
            log.exception("notification on %r from backend %s not handled", args[1], args[0])


class Notifications:
    """LISTEN on `channels` over a dedicated connection; read them with get()."""

    def __init__(self, url: str, channels: tuple[str, ...], queue_size: int = 20000,
                 health_interval: float = 1.0, max_backoff: float = 1.0,
                 application_name: str = "orderstream-listener",
                 signed: frozenset[str] = frozenset()) -> None:
        self._url = url
        self._channels = channels
        # Channels whose notifications must carry the triggers' signature (db/signing.py);
        # the rest are hints the reader checks against the database itself.
        self._signed = signed
        self._key = NotificationKey(b"")
        self._queue: asyncio.Queue[Notification] = asyncio.Queue(maxsize=queue_size)
        self._health_interval = health_interval
        self._max_backoff = max_backoff
        self._application_name = application_name
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()
        self.dropped = 0
        self.reconnects = 0
        self.rejected = 0
        # Called with (channel, payload) while the queue is empty; True means it took the
        # notification there and then (no queue, no task wake-up), False queues it.
        self.on_arrival: Callable[[str, str], bool] | None = None

    async def start(self) -> None:
        await self._connect()
        self._supervisor = asyncio.create_task(self._supervise(), name="listener-supervisor")

    async def close(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        await self._disconnect()

    async def get(self) -> Notification:
        return await self._queue.get()

    def put(self, item: Notification) -> None:
        """Queue an item of the reader's own behind what has arrived (or a gap marker)."""
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            # The reader fell behind: drop what is queued; it reads all of it from the log.
            self.dropped += self._queue.qsize() + (item is not None)
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(None)

    # -- the connection -------------------------------------------------------------

    async def _connect(self) -> None:
        # Reconnects back off to at most `max_backoff` (1 s), so events flow again about a
        # second after the database comes back; CONNECT_TIMEOUT_S bounds each attempt.
        conn = await asyncpg.connect(
            self._url, timeout=CONNECT_TIMEOUT_S, connection_class=PromptConnection,
            server_settings={"application_name": self._application_name})
        try:
            if self._signed:
                # Read on every connect: a re-keyed database is picked up with the connection.
                self._key = await load_key(conn)
            conn.add_termination_listener(self._on_terminated)
            conn.prompt = self._on_notification
            for channel in self._channels:
                await conn.add_listener(channel, self._on_notification)
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        self._lost.clear()
        self.listening.set()
        log.info("listening on %s (backend pid %s)", ", ".join(map(repr, self._channels)),
                 conn.get_server_pid())

    async def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        self.listening.clear()
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2)
            if not conn.is_closed():
                conn.terminate()

    def _on_terminated(self, conn: asyncpg.Connection) -> None:
        if conn is self._conn:
            self._mark_lost("connection terminated")

    def _on_notification(self, conn: object, pid: int, channel: str, payload: str) -> None:
        """Every notification, from the prompt or (should asyncpg stop calling it) from
        asyncpg's listeners."""
        if channel not in self._channels:
            return
        try:
            self._take(pid, channel, payload)
        except Exception:
            # Not handled, so maybe missing: the reader fills the gap from the log.
            log.exception("notification on %r from backend %s not handled", channel, pid)
            self.put(None)

    def _take(self, pid: int, channel: str, payload: str) -> None:
        if channel in self._signed:
            opened = self._key.open(channel, payload)
            if opened is None:
                self.rejected += 1
                # One line per unsigned notification would let its sender flood the log.
                if self.rejected & (self.rejected - 1) == 0:
                    log.warning("rejected an unsigned notification on %r from backend %s"
                                " (%d so far): %.120r", channel, pid, self.rejected, payload)
                return
            payload = opened
        arrival = self.on_arrival
        if arrival is not None and self._queue.empty() and arrival(channel, payload):
            return
        self.put((channel, payload))

    def _mark_lost(self, why: str) -> None:
        if not self._lost.is_set():
            log.warning("listener lost: %s", why)
            self.listening.clear()
            self._lost.set()
            # The gap starts here, before anything the next connection hears.
            self.put(None)

    async def _supervise(self) -> None:
        """Detect a dead connection (termination callback or failed health query) and
        reconnect. Whatever a dying connection raises, this task must not end."""
        while True:
            try:
                await asyncio.wait_for(self._lost.wait(), self._health_interval)
            except TimeoutError:
                if not await self._healthy():
                    self._mark_lost("health query failed")
                continue
            await self._disconnect()
            delay = 0.05
            while True:
                try:
                    await self._connect()
                    break
                except Exception as exc:  # a missing key as much as a refused connection
                    log.warning("listener reconnect failed (%s); retrying in %.2fs", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._max_backoff)
            self.reconnects += 1

    async def _healthy(self) -> bool:
        conn = self._conn
        if conn is None or conn.is_closed():
            return False
        try:
            await asyncio.wait_for(conn.fetchval("SELECT 1"), self._health_interval)
        except DATABASE_ERRORS:
            return False
        return True
