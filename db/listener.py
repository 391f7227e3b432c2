"""The pump that feeds the hub: the stream's own consumer, with a position like any other.

It takes notifications from the one LISTEN connection of the process (db/notifications.py)
in arrival order (commit order) and publishes each change with the stream's position
after it. When it is current it takes changes from the notifications (the fast lane);
when it falls behind (a lost connection, its queue overflowing, a statement announced in
bulk, an oversized frame it could not read) it reads the change log from its position,
on connections of its own, and then carries on with the notifications, skipping those its
position already covers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Protocol

from db import queries
from db.change import Change, ResyncReason
from db.changelog import ChangeLog
from db.failures import DATABASE_ERRORS
from db.notifications import Notification, Notifications
from db.position import Position, Snapshot
from db.rights import Identities, Rights

log = logging.getLogger(__name__)

ORDERS_CHANNEL = "orders"
QUOTES_CHANNEL = "quotes"
AUTH_CHANNEL = "auth"
# The triggers sign what they send here (db/signing.py); 'auth' only names whose rights
# to re-read from the database, so a forged one changes nothing.
SIGNED_CHANNELS = frozenset({ORDERS_CHANNEL, QUOTES_CHANNEL})
# The pump lets other tasks run after this many changes in a row.
YIELD_EVERY = 32
# A bulk statement's changes read from the log go to the hub this many at once
# (Hub.publish_page), then other tasks run.
PUBLISH_TOGETHER = 256
# One read of the log: at most this many rows and bytes.
PAGE_ROWS, PAGE_BYTES = 2000, 4 << 20
# A failed log read is retried after this long, doubling up to the cap (seconds).
RETRY_FIRST, RETRY_CAP = 0.05, 5.0
# Queued when a forged notification moved the position.
RESET: Notification = ("", "reset")
# Queued when the change log was lost, or recovered by another server, while this
# listener's connection stayed up: read the log (which recovers and expires what it lost).
RELOOK: Notification = ("", "relook")


class Sink(Protocol):
    position: Position

    def publish(self, change: Change, position: Position) -> None: ...

    def publish_page(self, changes: list[Change], cursors: list[str],
                     position: Position) -> bool: ...

    def advance(self, position: Position) -> None: ...

    def publish_quote(self, instrument: str, version: int, frame: str) -> None: ...

    def quote_instruments(self) -> list[str]: ...

    def resync_all(self, reason: str) -> None: ...

    def identities(self, user_id: int | None = None) -> Identities: ...

    def apply_rights(self, checked: Identities, rights: Rights) -> None: ...


class _Behind(Exception):
    """The notifications alone cannot carry on: read the change log."""


class Listener:
    """Feeds `sink` every order change, quote and rights change, in commit order."""

    def __init__(self, url: str, sink: Sink, queue_size: int = 20000,
                 health_interval: float = 1.0, max_backoff: float = 1.0,
                 log_statement_timeout_ms: int = 10_000) -> None:
        self._sink = sink
        self._notifications = Notifications(
            url, (ORDERS_CHANNEL, QUOTES_CHANNEL, AUTH_CHANNEL), queue_size, health_interval,
            max_backoff, signed=SIGNED_CHANNELS)
        # Its own reads (oversized frames, rights, catch-up), never the API's pool.
        self._log = ChangeLog(url, max_connections=2, statement_timeout_ms=log_statement_timeout_ms,
                              name="orderstream-listener-log")
        self._health_interval = health_interval
        self._tasks: list[asyncio.Task[None]] = []
        self.replays = 0
        self._ignored_auth = 0  # notifications on 'auth' of no user's (anyone may NOTIFY)
        self.forged = 0
        # Truncates acted on: those up to the floor (read at start) and these since.
        self._truncate_floor = 0
        self._truncates: set[int] = set()
        # True while the pump waits for a notification with nothing in hand: then one that
        # arrives may be published from the connection's callback (the fast lane).
        self._pump_idle = False
        # A RELOOK is queued and its catch-up has not begun: one is enough.
        self._relook_queued = False
        self._notifications.on_arrival = self._on_arrival
        # Set while a read of the change log after a gap keeps failing (a revoked grant, a
        # broken schema): events are heard but cannot be delivered, and /healthz says so.
        self.catch_up_failure: str | None = None
        # Moves each time rights may have changed (an 'auth' notification, a catch-up),
        # just before the rights of the sockets registered then are read. A socket that
        # authenticated before it moved and registered after must check its own rights.
        self.rights_epoch = 0

    @property
    def position(self) -> Position:
        return self._sink.position

    @property
    def listening(self) -> asyncio.Event:
        return self._notifications.listening

    @property
    def running(self) -> bool:
        """Whether the pump and the position check still run (started, not stopped by a
        bug): without them nothing heard is delivered."""
        return bool(self._tasks) and not any(task.done() for task in self._tasks)

    @property
    def reconnects(self) -> int:
        return self._notifications.reconnects

    @property
    def dropped(self) -> int:
        return self._notifications.dropped

    @property
    def rejected(self) -> int:
        """Notifications on a signed channel without the triggers' signature (ignored)."""
        return self._notifications.rejected

    async def start(self, timeout: float = 30.0) -> None:
        """Connect and LISTEN; returns once listening (raises if that fails within `timeout`)."""
        await asyncio.wait_for(self._log.open(), timeout)
        try:
            # A crash may have emptied the (unlogged) change log since anyone last read it.
            if await asyncio.wait_for(self._log.recover(), timeout):
                log.warning("the change log was lost (crash, failover or restore): older"
                            " cursors get resync")
            self._truncate_floor = await self._log.truncated_xid()
            await asyncio.wait_for(self._notifications.start(), timeout)
            # Everything committed before LISTEN took effect counts as delivered; positions
            # from here on are of the log's generation now.
            self._sink.advance((await asyncio.wait_for(self._log.state(), timeout)).start())
        except BaseException:
            await self._notifications.close()
            await self._log.close()
            raise
        self._tasks = [
            asyncio.create_task(self._pump(), name="listener-pump"),
            asyncio.create_task(self._watch_position(), name="listener-position-check"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self._notifications.close()
        await self._log.close()

    async def wait_listening(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.listening.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _watch_position(self) -> None:
        """Anyone who can connect may NOTIFY: a payload naming a transaction the database
        has not started would move the position past real changes. Everything published had
        committed before a snapshot taken afterwards, so a position past it was forged.

        Also, a lost change log (or one another server recovered) that this listener did not
        hear of, its connection having stayed up: its cursors would all be expired."""
        while True:
            await asyncio.sleep(self._health_interval)
            claimed = self.position
            try:
                state = await self._log.state()
            except DATABASE_ERRORS:
                continue
            if not state.alive or state.generation != claimed.generation:
                if not self._relook_queued:
                    self._relook_queued = True
                    self._notifications.put(RELOOK)
                continue
            snapshot = state.snapshot
            current = claimed.current
            if claimed.xmax > snapshot.xmax or (current is not None
                                                and current[0] >= snapshot.xmax):
                self.forged += 1
                log.error("the stream's position %s is past the database's (%s): a forged"
                          " notification; resetting", claimed.cursor(), snapshot)
                self._notifications.put(RESET)

    async def _pump(self) -> None:
        handled = 0
        while True:
            handled += 1
            if handled % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # let the senders run between slices of a burst
            self._pump_idle = True
            try:
                item = await self._notifications.get()
            finally:
                self._pump_idle = False
            try:
                if item is RESET:
                    await self._reset()
                elif item is RELOOK:
                    await self._catch_up("change log lost or recovered by another server")
                elif item is None:
                    # Read only once LISTENing again: whatever commits after the read's
                    # snapshot is then sure to be heard.
                    await self.listening.wait()
                    await self._catch_up("gap in notifications")
                    await self._refresh_quotes()
                else:
                    await self._dispatch(*item)
                continue
            except asyncio.CancelledError:
                raise
            except _Behind as behind:
                reason = str(behind)
            except Exception:
                # Whatever failed, a change may be missing: read the log rather than go on.
                log.exception("could not handle notification %r", item)
                reason = "dispatch failed"
            await self._recover(reason)

    async def _recover(self, reason: str) -> None:
        """Catch up from the log until it works. The pump must outlive whatever fails here
        (a bug included): if it stopped, every socket of this process would go silent while
        /healthz still said ok. Until it works, /healthz says so (`catch_up_failure`)."""
        retry = RETRY_FIRST
        while True:
            try:
                await self._catch_up(reason)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("catch-up after %s failed; retrying in %.2fs", reason, retry)
                self.catch_up_failure = f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(retry)
                retry = min(retry * 2, RETRY_CAP)

    async def _refresh_quotes(self) -> None:
        """Quotes have no log: after a gap, publish the current quote of every instrument
        someone follows. Sessions keep only versions newer than what they hold, so the ones
        heard before the gap change nothing."""
        instruments = self._sink.quote_instruments()
        if not instruments:
            return
        try:
            current = await queries.quote_frames(self._log.pool, instruments)
        except DATABASE_ERRORS as exc:
            log.warning("quotes after a gap could not be read (%s); the next ones will do", exc)
            return
        for instrument, version, frame in current:
            self._sink.publish_quote(instrument, version, frame)

    async def _reset(self) -> None:
        """Start again from what the database has committed now; what was skipped since
        the forged notification is lost, so every session reloads."""
        while True:
            try:
                state = await self._log.state()
                break
            except DATABASE_ERRORS as exc:
                log.warning("reset: no snapshot (%s); retrying", exc)
                await asyncio.sleep(RETRY_CAP)
        self._sink.advance(state.start())
        self._sink.resync_all(ResyncReason.FORGED)

    async def _dispatch(self, channel: str, payload: str) -> None:
        if channel == QUOTES_CHANNEL:
            # Anyone may NOTIFY: a payload that is not a quote frame is ignored.
            try:
                quote = json.loads(payload)
            except ValueError:
                quote = None
            instrument = quote.get("instrument") if isinstance(quote, dict) else None
            version = quote.get("version") if isinstance(quote, dict) else None
            if isinstance(instrument, str) and isinstance(version, int):
                self._sink.publish_quote(instrument, version, payload)
            else:
                log.warning("ignored a notification on 'quotes' that is no quote: %.200r", payload)
        elif channel == AUTH_CHANNEL:
            # Anyone who can connect may NOTIFY: the payload only says whose rights to
            # re-read, never what they are. Awaited here, so later events wait for it.
            try:
                change = json.loads(payload)
            except ValueError:
                change = None
            user_id = change.get("user_id") if isinstance(change, dict) else None
            if not isinstance(user_id, int) or isinstance(user_id, bool):
                # Not the triggers' shape: nobody's rights to re-read, and no reason to read
                # the log (which an exception here would make every server do, per NOTIFY).
                self._ignored_auth += 1
                if self._ignored_auth & (self._ignored_auth - 1) == 0:  # 1, 2, 4, ...: no flood
                    log.warning("ignored a notification on 'auth' that names no user (%d so"
                                " far): %.200r", self._ignored_auth, payload)
            else:
                self.rights_epoch += 1
                who = self._sink.identities(user_id)
                if who.users:
                    try:
                        rights = await self._log.rights(who)
                    except DATABASE_ERRORS as exc:
                        raise _Behind(f"rights could not be read: {exc}") from exc
                    self._sink.apply_rights(who, rights)
        elif payload.startswith("truncate "):
            # Signed, but anyone LISTENing could have kept a copy: act on each truncate once.
            xid = int(payload[len("truncate "):])
            if xid > self._truncate_floor and xid not in self._truncates:
                self._truncates.add(xid)
                self._sink.resync_all(ResyncReason.TRUNCATED)
        else:
            await self._order_change(payload)

    def _on_arrival(self, channel: str, payload: str) -> bool:
        """The fast lane: an order change that carries its frame, heard while the pump has
        nothing in hand, is published at once from the LISTEN connection's callback. That
        saves the pump's wake-up on every single-row write; anything else (bulk, oversized,
        truncate, quotes, rights) queues for the pump as before."""
        if not self._pump_idle or channel != ORDERS_CHANNEL or payload.startswith("truncate "):
            return False
        try:
            seq_text, xid_text, snapshot_text, rest = payload.split(" ", 3)
            if rest == "bulk":
                return False
            owner_text, old_owner_text, frame = rest.split(" ", 2)
            if not frame:
                return False
            self._publish(int(seq_text), int(xid_text), Snapshot.parse(snapshot_text),
                          owner_text, old_owner_text, frame)
        except Exception:
            # As in the pump: whatever failed, a change may be missing; the log has it.
            log.exception("could not dispatch notification %r", payload)
            self._notifications.put(None)
        return True

    def _publish(self, seq: int, xid: int, snapshot: Snapshot, owner_text: str,
                 old_owner_text: str, frame: str) -> None:
        position = self.position
        if position.covers(xid, seq):
            return  # a log read delivered it already
        old_owner = None if old_owner_text == "-" else int(old_owner_text)
        change = Change(seq, xid, int(owner_text), old_owner, frame)
        self._sink.publish(change, position.after_change(xid, seq, snapshot))

    async def _order_change(self, payload: str) -> None:
        seq_text, xid_text, snapshot_text, rest = payload.split(" ", 3)
        seq, xid = int(seq_text), int(xid_text)
        snapshot = Snapshot.parse(snapshot_text)
        if rest == "bulk":
            await self._read_transaction(xid, snapshot)
            return
        if self.position.covers(xid, seq):
            return  # a log read delivered it already
        owner_text, old_owner_text, frame = rest.split(" ", 2)
        if not frame:
            try:
                fetched = await self._log.frame(xid, seq)
            except DATABASE_ERRORS as exc:
                raise _Behind(f"oversized event {seq} could not be read: {exc}") from exc
            if fetched is None:
                raise _Behind(f"oversized event {seq} is not in order_changes")
            frame = fetched
        self._publish(seq, xid, snapshot, owner_text, old_owner_text, frame)

    async def _read_transaction(self, xid: int, snapshot: Snapshot) -> None:
        """A statement announced in bulk: publish its transaction's changes from the log,
        in seq order (the live stream stays in commit order)."""
        position = self.position
        if position.finished(xid):
            return
        current = position.current
        after_seq = current[1] if current is not None and current[0] == xid else 0

        async def read(after: int) -> tuple[list[Change], bool]:
            try:
                return await self._log.read_transaction(xid, after, PAGE_ROWS, PAGE_BYTES)
            except DATABASE_ERRORS as exc:
                raise _Behind(f"bulk statement of {xid} could not be read: {exc}") from exc

        # The next page is read while this one is published (PostgreSQL works on the other
        # core meanwhile): a 100,000-row statement is 50 pages.
        page = asyncio.ensure_future(read(after_seq))
        merged = False
        try:
            while True:
                changes, done = await page
                if not done:
                    page = asyncio.ensure_future(read(changes[-1].seq))
                for start in range(0, len(changes), PUBLISH_TOGETHER):
                    chunk = changes[start:start + PUBLISH_TOGETHER]
                    # The statement's snapshot is merged once, with its first change.
                    step = None if merged else snapshot
                    merged = True
                    last, cursors = position.after_changes(xid, [c.seq for c in chunk], step)
                    if self._sink.publish_page(chunk, cursors, last):
                        position = last
                    else:  # someone behind, short of room, or an order changing owner
                        for index, change in enumerate(chunk):
                            position = position.after_change(xid, change.seq, step)
                            step = None
                            self._sink.publish(change, position)
                            if index % YIELD_EVERY == YIELD_EVERY - 1:
                                await asyncio.sleep(0)
                    await asyncio.sleep(0)
                if done:
                    break
        finally:
            if not page.done():
                page.cancel()
        self._sink.advance(position.merge(snapshot.seen_by(xid)))

    async def _catch_up(self, reason: str) -> None:
        """Publish from the change log what the position does not cover. Rights changes
        may have been missed too: each page re-reads the rights of every open socket in
        its own snapshot and applies them before its changes."""
        started = time.monotonic()
        published = 0
        retry = RETRY_FIRST
        recovered = False
        # Whatever queued a RELOOK, this read answers it (the position check may queue
        # another until the new generation is ours: one more read, harmless).
        self._relook_queued = False
        while True:
            self.rights_epoch += 1  # rights changes may be among what was missed
            who = self._sink.identities()
            position = self.position
            try:
                # A gap may be a database crash, which empties the change log: recover it
                # first, so the read below expires what the crash took (resync).
                if not recovered and await self._log.recover():
                    log.warning("%s: the change log was lost (crash, failover or restore);"
                                " older cursors get resync", reason)
                recovered = True
                page = await self._log.read(position, None, who, PAGE_ROWS, PAGE_BYTES)
            except DATABASE_ERRORS as exc:
                log.warning("catch-up after %s failed (%s); retrying in %.2fs", reason, exc,
                            retry)
                self.catch_up_failure = f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(retry)
                retry = min(retry * 2, RETRY_CAP)
                continue
            retry = RETRY_FIRST
            self.catch_up_failure = None
            if page.rights is not None:
                self._sink.apply_rights(who, page.rights)
            if page.expired:
                log.warning("%s: the change log no longer covers the gap; sending resync",
                            reason)
                self._sink.resync_all(ResyncReason.EXPIRED)
            for index, (change, after) in enumerate(
                    zip(page.changes, page.positions(position), strict=True)):
                self._sink.publish(change, after)
                if index % YIELD_EVERY == YIELD_EVERY - 1:
                    await asyncio.sleep(0)  # let the senders drain between slices
            published += len(page.changes)
            self._sink.advance(page.end(position))
            if page.complete:
                break
        self.replays += 1
        log.info("%s: read %d changes from the log in %.1f ms", reason, published,
                 (time.monotonic() - started) * 1000)
