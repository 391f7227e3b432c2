"""Route order changes to the subscribers allowed to see them, each at its own speed.

The hub knows nothing about PostgreSQL. A producer (db/listener.py) publishes changes
in commit order with the stream position after each; the hub encodes each frame once
and queues it for every subscriber that may read it. A subscriber whose queue would pass
its byte budget, or that resumes from a cursor, falls BEHIND: it reads the change log
(through the `LogReader` it was given) from its own position, page by page as its socket
drains, then rejoins the live stream. Live, caught-up and replayed events are shaped by
the same function (web/frames.py) and carry the position after them as their cursor.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Protocol

from db.change import Change, Page
from db.position import Position
from db.rights import Identities, Rights
from web.catch_up import catch_up
from web.frames import ALL_OWNERS, OwnerKey, frame_for, resync_frame, with_cursor
from web.subscriber import Counters, Mode, Subscriber

# On Python 3.11 reading an enum member through its class costs about 0.2 us (a
# descriptor): _offer runs once per event per subscriber, 5,000 times for one event to
# 5,000 sockets, so it compares with these.
_CURRENT, _BEHIND = Mode.CURRENT, Mode.BEHIND


class LogReader(Protocol):
    async def read(self, position: Position, owner_id: int | None = None,
                   who: Identities | None = None, max_rows: int = 1000,
                   max_bytes: int = 1 << 20) -> Page: ...


class Hub:
    """Subscriptions by owner and by instrument, and fan-out of frames to them."""

    def __init__(self, log_reader: LogReader, queue_bytes: int = 1 << 20) -> None:
        self.log_reader = log_reader
        self.queue_bytes = queue_bytes
        self.counters = Counters()
        self.subscribers: set[Subscriber] = set()
        self._by_user: dict[int, set[Subscriber]] = {}
        self._by_owner: dict[OwnerKey, set[Subscriber]] = {}
        self._by_instrument: dict[str, set[Subscriber]] = {}
        # What has been published: `subscribed` frames carry it.
        self.position = Position()
        self.last_seq = 0

    # -- registration ------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def subscriber(self, user_id: int, is_staff: bool, token_id: int | None = None,
                         web_session_id: str | None = None) -> AsyncIterator[Subscriber]:
        """Register a socket for as long as the block runs."""
        sub = Subscriber(user_id, is_staff, self.queue_bytes, token_id, web_session_id)
        self.subscribers.add(sub)
        self._by_user.setdefault(user_id, set()).add(sub)
        try:
            yield sub
        finally:
            self._remove(sub)

    def sockets_of(self, user_id: int) -> int:
        """How many sockets of this user are registered in this process."""
        return len(self._by_user.get(user_id, ()))

    def _remove(self, sub: Subscriber) -> None:
        mine = self._by_user.get(sub.user_id)
        if mine is not None:
            mine.discard(sub)
            if not mine:
                del self._by_user[sub.user_id]
        self.unsubscribe_orders(sub)
        self.unsubscribe_quotes(sub)
        sub.stop_catch_up()
        self.subscribers.discard(sub)

    def subscribe_orders(self, sub: Subscriber, key: OwnerKey,
                         after: Position | None = None) -> None:
        """Route orders of owner `key` (or of everyone, "*") to `sub`, live from now on, or
        from position `after` (a resume). Replaces its previous orders subscription.
        Authorisation is the caller's job."""
        self.unsubscribe_orders(sub)
        self._by_owner.setdefault(key, set()).add(sub)
        sub.orders_key = key
        sub.generation += 1
        if after is None:
            sub.mode, sub.position = Mode.CURRENT, None
        else:
            self._fall_behind(sub, after)

    def unsubscribe_orders(self, sub: Subscriber) -> None:
        key = sub.orders_key
        if key is None:
            return
        sub.generation += 1
        sub.stop_catch_up()
        sub.mode, sub.position = Mode.CURRENT, None
        subscribers = self._by_owner.get(key)
        if subscribers is not None:
            subscribers.discard(sub)
            if not subscribers:
                del self._by_owner[key]
        sub.orders_key = None

    def subscribe_quotes(self, sub: Subscriber, instruments: frozenset[str]) -> None:
        """Route quotes of `instruments` to `sub`, replacing its previous quotes
        subscription; quotes of the instruments it keeps stay pending."""
        self._unroute_quotes(sub)
        for instrument in instruments:
            self._by_instrument.setdefault(instrument, set()).add(sub)
        sub.instruments = instruments
        sub.quotes_generation += 1
        sub.queue.quotes.keep_only(instruments)

    def unsubscribe_quotes(self, sub: Subscriber) -> None:
        self._unroute_quotes(sub)
        sub.quotes_generation += 1
        sub.queue.quotes.clear()

    def _unroute_quotes(self, sub: Subscriber) -> None:
        for instrument in sub.instruments:
            subscribers = self._by_instrument.get(instrument)
            if subscribers is not None:
                subscribers.discard(sub)
                if not subscribers:
                    del self._by_instrument[instrument]
        sub.instruments = frozenset()

    # -- the stream --------------------------------------------------------------------

    def publish(self, change: Change, position: Position) -> None:
        """Deliver one change, published in commit order; `position` is the stream's
        position after it (its cursor)."""
        before, self.position = self.position, position
        self.counters.events_received += 1
        self.last_seq = max(self.last_seq, change.seq)
        frame = with_cursor(change.frame, position.cursor())
        keys: list[OwnerKey] = [change.owner_id, ALL_OWNERS]
        if change.old_owner_id is not None and change.old_owner_id != change.owner_id:
            keys.append(change.old_owner_id)
        for key in keys:
            subscribers = self._by_owner.get(key)
            if not subscribers:
                continue
            shaped = frame_for(key, change, frame)
            if shaped is None:
                continue
            for sub in subscribers:  # _offer never changes who subscribes
                self._offer(sub, change, shaped, before)

    def publish_page(self, changes: list[Change], cursors: list[str],
                     position: Position) -> bool:
        """Deliver `changes` (of one transaction, in seq order; `cursors` the stream's
        position after each, `position` after the last) in one go, when no order among them
        moves between owners and every subscriber they reach is current with room for all
        it gets. Else False, with nothing done: then `publish` them one by one.

        Each subscriber gets the frames `publish` one by one would give it, in the same
        order, through its queue: a page is not offered straight to a waiting socket
        (web/frame_writer.py), its sender takes the page from the queue on its next turn.
        A bulk statement's page of up to 2,000 changes: per change, `publish` is a
        position, a cursor, routing and a queue put for each subscriber; here a change
        costs its frame, and each subscriber one put of the page."""
        by_owner = self._by_owner
        owners = set()
        for change in changes:
            old_owner = change.old_owner_id
            if old_owner is not None and old_owner != change.owner_id:
                return False  # frame_for reshapes it per owner
            owners.add(change.owner_id)
        reached = {key: subscribers for key in (ALL_OWNERS, *owners)
                   if (subscribers := by_owner.get(key))}
        # Who cannot take a page, before any frame is made (a subscriber rejoining from
        # the log stays AHEAD until the statement ends: every page of it comes here).
        for subscribers in reached.values():
            for sub in subscribers:
                if sub.mode is not _CURRENT and not sub.closing:
                    return False
        frames = [with_cursor(change.frame, cursor)
                  for change, cursor in zip(changes, cursors, strict=True)]
        # One list of queue items per owner reached, shared by its subscribers (tuples:
        # immutable).
        everyone = [(frame, True) for frame in frames]
        owned: dict[OwnerKey, list[tuple[str, bool]]] = {ALL_OWNERS: everyone}
        if len(owners) == 1:
            owned[next(iter(owners))] = everyone
        else:
            for change, item in zip(changes, everyone, strict=True):
                if change.owner_id in reached:
                    owned.setdefault(change.owner_id, []).append(item)
        deliveries = [(reached[key], items, sum(len(frame) for frame, _ in items))
                      for key, items in owned.items() if key in reached]
        for subscribers, items, size in deliveries:
            for sub in subscribers:
                if not sub.closing and not sub.queue.fits_events(size, len(items)):
                    return False
        for subscribers, items, size in deliveries:
            for sub in subscribers:
                if not sub.closing:
                    sub.queue.put_events(items, size)
        self.position = position
        self.counters.events_received += len(changes)
        self.last_seq = max(self.last_seq, changes[-1].seq)
        return True

    def advance(self, position: Position) -> None:
        """The stream moved without a change for anyone (a snapshot merged, a gap read)."""
        self.position = position

    def _offer(self, sub: Subscriber, change: Change, frame: str, before: Position) -> None:
        # Once per event per subscriber: the common case first, and the modes compared
        # with module constants (see _CURRENT).
        if sub.closing:
            return
        mode = sub.mode
        if mode is _CURRENT:
            queue = sub.queue
            if not queue.fits(frame):
                self._fall_behind(sub, before)
            elif sub.batch:  # kept in the queue, where events waiting together are packed
                queue.put(frame, event=True)
            else:
                queue.offer(frame)
            return
        if mode is _BEHIND:
            sub.hold(change.xid, change.seq, frame)
            return
        assert sub.position is not None  # AHEAD
        if sub.position.generation != self.position.generation:
            # Its position names xids of a lost change log (resync_all told it so): they
            # cover nothing of this one, whatever their numbers. Current from here.
            sub.mode, sub.position = Mode.CURRENT, None
            self._offer(sub, change, frame, before)
            return
        if sub.position.covers(change.xid, change.seq):
            if self.position.includes(sub.position):
                sub.mode, sub.position = Mode.CURRENT, None
            return
        if not sub.queue.fits(frame):
            self._fall_behind(sub, sub.position.union(before))
            return
        if sub.batch:
            sub.queue.put(frame, event=True)
        else:
            sub.queue.offer(frame)
        if self.position.includes(sub.position):
            sub.mode, sub.position = Mode.CURRENT, None

    def _fall_behind(self, sub: Subscriber, position: Position) -> None:
        sub.stop_catch_up()
        sub.mode, sub.position = Mode.BEHIND, position
        self.counters.catch_ups += 1
        sub.catch_up = asyncio.create_task(catch_up(self, sub, sub.generation),
                                           name=f"catch-up-{sub.user_id}")

    def publish_quote(self, instrument: str, version: int, frame: str) -> None:
        """Offer a quote to the subscribers of its instrument: each holds only the newest
        unsent one (web/quotes.py), so a slow reader costs nothing and gets the latest."""
        self.counters.quotes_received += 1
        for sub in self._by_instrument.get(instrument, ()):
            if not sub.closing and sub.queue.put_quote(instrument, version, frame):
                self.counters.quotes_dropped += 1  # a pending quote was replaced

    def quote_instruments(self) -> list[str]:
        """The instruments some subscriber follows."""
        return sorted(self._by_instrument)

    def resync_all(self, reason: str) -> None:
        """Tell every orders subscriber to reload (TRUNCATE: the log cannot replay it)."""
        frame = resync_frame(reason)
        for subscribers in self._by_owner.values():
            for sub in subscribers:
                if sub.mode is Mode.BEHIND:
                    sub.held = None  # its next read finds the log expired, and says so
                    continue
                if sub.mode is Mode.AHEAD:
                    # It reloads: from here on it needs every event, including any its
                    # position claims (after a lost log, those xids name other changes).
                    sub.mode, sub.position = Mode.CURRENT, None
                self.counters.resyncs_sent += 1
                sub.reply(frame)

    def close_all(self, code: int, reason: str) -> None:
        for sub in list(self.subscribers):
            sub.close(code, reason)

    # -- rights ------------------------------------------------------------------------

    def identities(self, user_id: int | None = None) -> Identities:
        """Who the open sockets (of one user, or all) are: for a rights check."""
        subs = self.subscribers if user_id is None else self._by_user.get(user_id, set())
        return Identities(
            users={s.user_id for s in subs},
            tokens={s.token_id for s in subs if s.token_id is not None},
            web_sessions={s.web_session_id for s in subs if s.web_session_id is not None},
        )

    def identities_of(self, sub: Subscriber) -> Identities:
        return Identities(
            users={sub.user_id},
            tokens={sub.token_id} if sub.token_id is not None else set(),
            web_sessions={sub.web_session_id} if sub.web_session_id is not None else set(),
        )

    def apply_rights(self, checked: Identities, rights: Rights) -> None:
        """Apply what the database says now about the `checked` identities, before any
        later event: a deleted user, a revoked token or an ended browser session loses
        its sockets; a demoted staff user loses subscriptions to other owners."""
        for user_id in checked.users:
            for sub in list(self._by_user.get(user_id, ())):
                if not self._take_away(sub, rights, checked):
                    sub.is_staff = rights.staff[user_id]

    def narrow(self, sub: Subscriber, rights: Rights) -> None:
        """Apply rights read in a catch-up's snapshot, only ever taking away: the stream may
        already have applied newer ones."""
        self._take_away(sub, rights, self.identities_of(sub))

    def _take_away(self, sub: Subscriber, rights: Rights, checked: Identities) -> bool:
        if sub.user_id not in rights.staff:
            sub.close(1008, "account deleted")
        elif sub.token_id in checked.tokens and sub.token_id not in rights.tokens:
            sub.close(1008, "token revoked")
        elif (sub.web_session_id in checked.web_sessions
              and sub.web_session_id not in rights.web_sessions):
            sub.close(1008, "logged out")
        elif not rights.staff[sub.user_id] and sub.is_staff:
            self._demote(sub)
        else:
            return False
        return True

    def _demote(self, sub: Subscriber) -> None:
        sub.is_staff = False
        if sub.orders_key not in (None, sub.user_id):
            self.unsubscribe_orders(sub)
            sub.reply(json.dumps({
                "type": "error", "code": "forbidden",
                "message": "staff rights were revoked; subscribe to your own orders"}))
