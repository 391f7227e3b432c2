"""The one LISTEN connection per server process, and the pump that feeds the hub.

The notification callback is synchronous and tiny: it puts the raw payload on a
bounded queue and returns. The pump task takes payloads in arrival order (which
is commit order), fetches oversized frames from order_changes, stamps each with
the stream's cursor (db/position.py) and publishes it to the hub. When the
connection is lost (termination callback, or a failed health query) the listener
reconnects with capped exponential backoff and re-LISTENs; notifications sent
while nobody listened are gone, so the pump replays them from the change log
itself, and only falls back to `resync` when the log cannot cover the gap.
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

from db.position import Position, with_cursor
from db.queries import Change
from db.rights import Identities, Rights

log = logging.getLogger(__name__)

ORDERS_CHANNEL = "orders"
QUOTES_CHANNEL = "quotes"
AUTH_CHANNEL = "auth"
# The pump lets other tasks run after this many notifications in a row.
YIELD_EVERY = 32
# Tries at reading the change log after a gap (0.1 s, doubling, between them).
RECOVERY_ATTEMPTS = 5
# A notification is (channel, payload); None marks "the listener lost events here".
Notification = tuple[str, str] | None


class OrderSink(Protocol):
    cursor: str

    def publish_order(self, seq: int, txn: int, owner_id: int, old_owner_id: int | None,
                      frame: str) -> None: ...

    def publish_quote(self, instrument: str, frame: str) -> None: ...

    def advance_watermark(self, watermark: int) -> None: ...

    def resync_all(self, reason: str) -> None: ...

    def identities(self, user_id: int | None = None) -> Identities: ...

    def apply_rights(self, checked: Identities, rights: Rights) -> None: ...


class _Gap(Exception):
    """An order notification could not be published: recover from the change log."""


class Listener:
    """Keeps one dedicated connection LISTENing on the orders and quotes channels."""

    def __init__(
        self,
        url: str,
        sink: OrderSink,
        fetch_frame: Callable[[int], Awaitable[str | None]],
        load_rights: Callable[[Identities], Awaitable[Rights]],
        recover: Callable[[Position, Identities], Awaitable[tuple[Rights, list[Change] | None]]],
        queue_size: int = 20000,
        health_interval: float = 1.0,
        max_backoff: float = 5.0,
    ) -> None:
        self._url = url
        self._sink = sink
        self._fetch_frame = fetch_frame
        self._load_rights = load_rights
        self._recover_from_log = recover
        # What the hub has been given so far; events carry it as their cursor.
        self.position = Position()
        # Transactions the last gap replay delivered: their live notifications are repeats.
        self._replayed: set[int] = set()
        self._queue: asyncio.Queue[Notification] = asyncio.Queue(maxsize=queue_size)
        self._health_interval = health_interval
        self._max_backoff = max_backoff
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self.dropped = 0
        self._tasks: list[asyncio.Task[None]] = []
        self.listening = asyncio.Event()
        self.reconnects = 0
        self.replays = 0
        self.anomalies = 0


    async def start(self, timeout: float = 30.0) -> None:
        """Connect and LISTEN; returns once listening (raises if that fails within `timeout`)."""
        await asyncio.wait_for(self._connect(), timeout)
        assert self._conn is not None
        watermark = await self._conn.fetchval(
            "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
        self.position = Position(watermark)
        self._sink.cursor = self.position.cursor()
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
        conn = await asyncpg.connect(
            self._url, server_settings={"application_name": "orderstream-listener"})
        conn.add_termination_listener(self._on_terminated)
        await conn.add_listener(ORDERS_CHANNEL, self._on_notification)
        await conn.add_listener(QUOTES_CHANNEL, self._on_notification)
        await conn.add_listener(AUTH_CHANNEL, self._on_notification)
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
            self.listening.clear()
            self._lost.set()
            # The gap starts here, before anything the next connection hears: events
            # after the marker must not advance the position past what was missed.
            self._enqueue(None)

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
            # The pump fell behind. Drop everything not yet published and mark a gap: the
            # pump replays it all from the change log, in order.
            self.dropped += self._queue.qsize() + (item is not None)
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(None)

    async def _pump(self) -> None:
        handled = 0
        while True:
            if handled % YIELD_EVERY == 0:
                # A bulk UPDATE queues thousands of notifications at once; let the session
                # senders run between slices so readers that keep up never overflow.
                await asyncio.sleep(0)
            handled += 1
            item = await self._queue.get()
            try:
                if item is None:
                    # Replay only once LISTENing again: whatever commits after the replay's
                    # snapshot is then sure to be heard.
                    await self.listening.wait()
                    await self._recover("gap in notifications")
                else:
                    await self._dispatch(*item)
            except asyncio.CancelledError:
                raise
            except _Gap as gap:
                await self._recover(str(gap))
            except Exception:
                # Whatever failed, an event may be missing: recover rather than go on.
                log.exception("could not dispatch notification %r", item)
                await self._recover("dispatch failed")

    async def _dispatch(self, channel: str, payload: str) -> None:
        if channel == QUOTES_CHANNEL:
            quote = json.loads(payload)
            self._sink.publish_quote(quote["instrument"], payload)
            return
        if channel == AUTH_CHANNEL:
            # Anyone who can connect may NOTIFY: the payload only says whose rights to
            # re-read, never what they are. Awaited here, so later events wait for it.
            change = json.loads(payload)
            user_id = change.get("user_id") if isinstance(change, dict) else None
            if isinstance(user_id, int):
                who = self._sink.identities(user_id)
                if who.users:
                    self._sink.apply_rights(who, await self._load_rights(who))
            return
        if payload == "truncate":
            self._sink.resync_all("orders truncated")
            return
        header_and_frame = payload.split(" ", 5)
        seq_text, xid_text, watermark_text, owner_text, old_owner_text, frame = header_and_frame
        seq, xid = int(seq_text), int(xid_text)
        if self._replayed and xid in self._replayed:
            return
        if not frame:
            try:
                fetched = await self._fetch_frame(seq)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                raise _Gap(f"oversized event {seq} could not be read: {exc}") from exc
            if fetched is None:
                raise _Gap(f"oversized event {seq} is not in order_changes")
            frame = fetched
        old_owner = None if old_owner_text == "-" else int(old_owner_text)
        if xid < self.position.watermark:
            # An earlier event promised every transaction below the watermark had been
            # heard; this one was not. The stream broke in a way nothing explains, so a
            # cursor or replay may have skipped it: make every session reload.
            self.anomalies += 1
            log.error("event %s of transaction %s arrived behind watermark %s; resync",
                      seq, xid, self.position.watermark)
            self._sink.resync_all("gap detected")
        self._publish(seq, xid, int(watermark_text), int(owner_text), old_owner, frame)

    def _publish(self, seq: int, xid: int, watermark: int, owner_id: int,
                 old_owner_id: int | None, frame: str) -> None:
        position = self.position
        before = position.watermark
        position.advance(xid, seq, watermark)
        cursor = position.cursor()
        self._sink.publish_order(seq, xid, owner_id, old_owner_id, with_cursor(frame, cursor))
        self._sink.cursor = cursor
        if position.watermark != before:
            self._sink.advance_watermark(position.watermark)
            if self._replayed:
                self._replayed = {x for x in self._replayed if x >= position.watermark}

    async def _recover(self, reason: str) -> None:
        """Deliver from the change log what the stream missed; resync only if it can't.

        Rights changes were lost in the gap too: the sessions' rights are re-read in the
        same snapshot as the missed changes and applied first."""
        started = time.monotonic()
        rights: Rights | None = None
        changes: list[Change] | None = None
        for attempt in range(RECOVERY_ATTEMPTS):
            who = self._sink.identities()
            try:
                rights, changes = await self._recover_from_log(self.position, who)
                break
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("recovery after %s failed (%s); attempt %d", reason, exc,
                            attempt + 1)
                await asyncio.sleep(0.1 * 2**attempt)
        # Rights that could not be read leave nobody a wider view than their own orders.
        self._sink.apply_rights(who, rights if rights is not None else _own_orders_only(who))
        if changes is None:
            log.warning("%s: the change log cannot cover the gap; sending resync", reason)
            self._sink.resync_all(reason)
            return
        for index, change in enumerate(changes):
            self._publish(change.seq, change.xid, self.position.watermark, change.owner_id,
                          change.old_owner_id, change.frame)
            if index % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)  # let the senders drain between slices
        self._replayed |= {change.xid for change in changes}
        self.replays += 1
        log.info("%s: replayed %d missed events in %.1f ms", reason, len(changes),
                 (time.monotonic() - started) * 1000)


def _own_orders_only(who: Identities) -> Rights:
    """When rights cannot be read: everyone keeps their socket, nobody stays staff."""
    return Rights(staff=dict.fromkeys(who.users, False), tokens=set(who.tokens),
                  web_sessions=set(who.web_sessions))
