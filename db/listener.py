"""The one LISTEN connection per server process, and the pump that feeds the hub.

The notification callback is synchronous and tiny: it puts the raw payload on a
bounded queue and returns. The pump task takes payloads in arrival order (which
is commit order), fetches oversized frames from order_changes, and publishes
them to the hub. When the connection is lost the listener reconnects with capped
exponential backoff, re-LISTENs and reports the gap, because notifications
sent while nobody listened are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import asyncpg

log = logging.getLogger(__name__)

ORDERS_CHANNEL = "orders"
QUOTES_CHANNEL = "quotes"
# A notification is (channel, payload); None marks "the listener lost events here".
Notification = tuple[str, str] | None


class OrderSink(Protocol):
    def publish_order(self, seq: int, owner_id: int, old_owner_id: int | None, frame: str) -> None:
        ...

    def publish_quote(self, instrument: str, frame: str) -> None:
        ...


class Listener:
    """Keeps one dedicated connection LISTENing on the orders and quotes channels."""

    def __init__(
        self,
        url: str,
        sink: OrderSink,
        fetch_frame: Callable[[int], Awaitable[str | None]],
        on_gap: Callable[[str], Awaitable[None]],
        queue_size: int = 20000,
        health_interval: float = 1.0,
        max_backoff: float = 5.0,
    ) -> None:
        self._url = url
        self._sink = sink
        self._fetch_frame = fetch_frame
        self._on_gap = on_gap
        self._queue: asyncio.Queue[Notification] = asyncio.Queue(maxsize=queue_size)
        self._health_interval = health_interval
        self._max_backoff = max_backoff
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._overflowed = False
        self._tasks: list[asyncio.Task[None]] = []
        self.listening = asyncio.Event()
        self.reconnects = 0
        self.notifications = 0
        self.last_loss_detected_at: float | None = None

    @property
    def backend_pid(self) -> int | None:
        return self._conn.get_server_pid() if self._conn is not None else None

    async def start(self, timeout: float = 30.0) -> None:
        """Connect and LISTEN; returns once listening (raises if that fails within `timeout`)."""
        await asyncio.wait_for(self._connect(), timeout)
        self._tasks = [
            asyncio.create_task(self._pump(), name="listener-pump"),
            asyncio.create_task(self._supervise(), name="listener-supervisor"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self._disconnect()

    async def wait_listening(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.listening.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # -- connection ---------------------------------------------------------

    async def _connect(self) -> None:
        conn = await asyncpg.connect(self._url)
        conn.add_termination_listener(self._on_terminated)
        await conn.add_listener(ORDERS_CHANNEL, self._on_notification)
        await conn.add_listener(QUOTES_CHANNEL, self._on_notification)
        self._conn = conn
        self._lost.clear()
        self.listening.set()
        log.info("listening on %r and %r (backend pid %s)", ORDERS_CHANNEL, QUOTES_CHANNEL,
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

    def _mark_lost(self, why: str) -> None:
        if not self._lost.is_set():
            log.warning("listener lost: %s", why)
            self.last_loss_detected_at = time.monotonic()
            self.listening.clear()
            self._lost.set()

    async def _supervise(self) -> None:
        """Detect a dead connection (termination callback or failed health query) and reconnect."""
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
                except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                    log.warning("listener reconnect failed (%s); retrying in %.2fs", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._max_backoff)
            self.reconnects += 1
            # Everything before this marker was received; what follows is after the gap.
            self._enqueue(None)

    async def _healthy(self) -> bool:
        conn = self._conn
        if conn is None or conn.is_closed():
            return False
        try:
            await asyncio.wait_for(conn.fetchval("SELECT 1"), self._health_interval)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            return False
        return True

    # -- notifications ------------------------------------------------------

    def _on_notification(self, conn: object, pid: int, channel: str, payload: str) -> None:
        self._enqueue((channel, payload))

    def _enqueue(self, item: Notification) -> None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            # The pump fell behind: what no longer fits is lost; say so once it catches up.
            self._overflowed = True

    async def _pump(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                if item is None:
                    await self._on_gap("listener reconnected")
                else:
                    await self._dispatch(*item)
                if self._overflowed and self._queue.empty():
                    self._overflowed = False
                    await self._on_gap("listener overflow")
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("could not dispatch notification %r", item)

    async def _dispatch(self, channel: str, payload: str) -> None:
        self.notifications += 1
        if channel == QUOTES_CHANNEL:
            quote = json.loads(payload)
            self._sink.publish_quote(quote["instrument"], payload)
            return
        seq_text, owner_text, old_owner_text, frame = payload.split(" ", 3)
        seq = int(seq_text)
        if not frame:
            fetched = await self._fetch_frame(seq)
            if fetched is None:
                log.error("oversized event %s is no longer in order_changes", seq)
                await self._on_gap("event expired")
                return
            frame = fetched
        old_owner = None if old_owner_text == "-" else int(old_owner_text)
        self._sink.publish_order(seq, int(owner_text), old_owner, frame)
