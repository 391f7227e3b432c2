"""Route decoded events to the WebSocket sessions allowed to see them.

The hub knows nothing about PostgreSQL: a producer (db/listener.py in the
server, a plain coroutine in tests) calls publish_order/publish_quote with
ready-made frames, and the hub hands each frame, encoded once, to the bounded
queue of every session that may read it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from db.rights import Identities, Rights

ALL_OWNERS: Literal["*"] = "*"
OwnerKey = int | Literal["*"]
# Queued after everything else to make the session's sender close the socket.
CLOSE = "\x00close"


def resync_frame(reason: str) -> str:
    return json.dumps({"type": "resync", "reason": reason})


@dataclass
class Counters:
    events_received: int = 0
    quotes_received: int = 0
    frames_sent: int = 0
    frames_dropped: int = 0
    resyncs_sent: int = 0


@dataclass(eq=False)
class Session:
    """One WebSocket connection's view of the hub: who it is and what it waits for."""

    user_id: int
    is_staff: bool
    queue_size: int
    counters: Counters
    token_id: int | None = None
    session_id: str | None = None
    queue: asyncio.Queue[str] = field(init=False)
    # Set before CLOSE is queued: how the sender closes the socket.
    closing: bool = False
    close_code: int = 1000
    close_reason: str = ""
    # Bumped by every change of the orders subscription: a resume that awaited the
    # database checks it did not change (or get revoked) meanwhile.
    orders_generation: int = 0
    orders_key: OwnerKey | None = None
    instruments: frozenset[str] = frozenset()
    # While a resume replays from the change log, live events wait here.
    held: list[tuple[int, int, str]] | None = None  # (txn, seq, frame)
    held_overflowed: bool = False
    # After a resume: events the client already has (by the replay, or before it
    # reconnected, perhaps through another server process that was ahead of this one).
    already_has: Callable[[int, int], bool] | None = None
    already_has_upto: int = 0  # no transaction above this one is covered

    def __post_init__(self) -> None:
        self.queue = asyncio.Queue(maxsize=self.queue_size)

    def offer_event(self, txn: int, seq: int, frame: str) -> None:
        if self.already_has is not None and self.already_has(txn, seq):
            return
        if self.held is None:
            self.offer(frame)
        elif len(self.held) < self.queue_size:
            self.held.append((txn, seq, frame))
        else:
            self.held_overflowed = True
            self.held.clear()

    def offer(self, frame: str) -> None:
        """Queue a frame without waiting; on overflow drop the backlog and ask for a resync."""
        if self.closing:
            return  # nothing may overtake (or, on overflow, wipe out) the queued CLOSE
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            dropped = self.queue.qsize() + 1
            while not self.queue.empty():
                self.queue.get_nowait()
            self.counters.frames_dropped += dropped
            self.counters.resyncs_sent += 1
            self.queue.put_nowait(resync_frame("overflow"))

    def close(self, code: int, reason: str) -> None:
        """Have the sender close the socket after what is queued (or at once, if full);
        from now on nothing more is queued."""
        if self.closing:
            return
        self.closing = True
        self.close_code, self.close_reason = code, reason
        if self.queue.full():
            while not self.queue.empty():
                self.queue.get_nowait()
        self.queue.put_nowait(CLOSE)


class Hub:
    """Subscriptions by owner and by instrument, and fan-out of frames to them."""

    def __init__(self, session_queue_size: int = 2000) -> None:
        self.session_queue_size = session_queue_size
        self.counters = Counters()
        self.sessions: set[Session] = set()
        self._by_user: dict[int, set[Session]] = {}
        self._by_owner: dict[OwnerKey, set[Session]] = {}
        self._by_instrument: dict[str, set[Session]] = {}
        # Highest seq published so far, and the stream's cursor; `subscribed` frames carry them.
        self.last_seq = 0
        self.cursor = ""
        self._skipping: set[Session] = set()

    def open_session(self, user_id: int, is_staff: bool, token_id: int | None = None,
                     session_id: str | None = None) -> Session:
        session = Session(user_id, is_staff, self.session_queue_size, self.counters, token_id,
                          session_id)
        self.sessions.add(session)
        self._by_user.setdefault(user_id, set()).add(session)
        return session

    def close_session(self, session: Session) -> None:
        mine = self._by_user.get(session.user_id)
        if mine is not None:
            mine.discard(session)
            if not mine:
                del self._by_user[session.user_id]
        self._skipping.discard(session)
        self.unsubscribe_orders(session)
        self.unsubscribe_quotes(session)
        self.sessions.discard(session)

    def subscribe_orders(self, session: Session, key: OwnerKey, hold: bool = False) -> None:
        """Route orders of owner `key` (or of everyone, "*") to the session; replaces its
        previous orders subscription. Authorisation is the caller's job. With `hold`, live
        events wait until release_held() (a resume is replaying what came before)."""
        self.unsubscribe_orders(session)
        self._forget_resume(session)
        self._by_owner.setdefault(key, set()).add(session)
        session.orders_key = key
        session.orders_generation += 1
        if hold:
            session.held, session.held_overflowed = [], False

    def release_held(self, session: Session, replayed: list[str],
                     already_has: Callable[[int, int], bool] | None = None,
                     already_has_upto: int = 0, resync_reason: str | None = None) -> None:
        """End a resume: queue the replayed frames, then the live events that waited, minus
        those the client already has (`already_has(txn, seq)`, for transactions up to
        `already_has_upto`: later ones are all new)."""
        held, session.held = session.held or [], None
        self._forget_resume(session)
        if resync_reason is not None or session.held_overflowed:
            self.counters.resyncs_sent += 1
            session.offer(resync_frame(resync_reason or "overflow"))
            return
        for frame in replayed:
            session.offer(frame)
        if already_has is not None:
            session.already_has, session.already_has_upto = already_has, already_has_upto
            self._skipping.add(session)
        for txn, seq, frame in held:
            session.offer_event(txn, seq, frame)

    def _forget_resume(self, session: Session) -> None:
        session.already_has = None
        self._skipping.discard(session)

    def narrow(self, session: Session, rights: Rights) -> None:
        """Apply rights read in a resume's snapshot to that session, only ever taking
        away: the stream may already have applied newer ones (a later promotion is not
        undone here; a later demotion must not be undone by these older rights)."""
        if session.user_id not in rights.staff:
            session.close(1008, "account deleted")
        elif session.token_id is not None and session.token_id not in rights.tokens:
            session.close(1008, "token revoked")
        elif session.session_id is not None and session.session_id not in rights.web_sessions:
            session.close(1008, "logged out")
        elif not rights.staff[session.user_id] and session.is_staff:
            self._demote(session)

    def _demote(self, session: Session) -> None:
        session.is_staff = False
        if session.orders_key not in (None, session.user_id):
            self.unsubscribe_orders(session)
            session.offer(json.dumps({
                "type": "error", "code": "forbidden",
                "message": "staff rights were revoked; subscribe to your own orders"}))

    def advance_watermark(self, watermark: int) -> None:
        """Every transaction below `watermark` has been published: stop checking what
        resumed sessions already have once the stream is past all of it."""
        for session in list(self._skipping):
            if watermark > session.already_has_upto:
                session.already_has = None
                self._skipping.discard(session)

    def unsubscribe_orders(self, session: Session) -> None:
        key = session.orders_key
        if key is None:
            return
        session.orders_generation += 1
        session.held = None
        self._forget_resume(session)
        subscribers = self._by_owner.get(key)
        if subscribers is not None:
            subscribers.discard(session)
            if not subscribers:
                del self._by_owner[key]
        session.orders_key = None

    def subscribe_quotes(self, session: Session, instruments: frozenset[str]) -> None:
        self.unsubscribe_quotes(session)
        for instrument in instruments:
            self._by_instrument.setdefault(instrument, set()).add(session)
        session.instruments = instruments

    def unsubscribe_quotes(self, session: Session) -> None:
        for instrument in session.instruments:
            subscribers = self._by_instrument.get(instrument)
            if subscribers is not None:
                subscribers.discard(session)
                if not subscribers:
                    del self._by_instrument[instrument]
        session.instruments = frozenset()

    def publish_order(
        self, seq: int, txn: int, owner_id: int, old_owner_id: int | None, frame: str
    ) -> None:
        """Deliver one order event of transaction `txn`. `frame` is the complete text
        frame for the owner.

        When an update moved the order away from `old_owner_id`, that owner's
        sessions get a delete instead (they may no longer read the order), and the new
        owner's sessions an insert (it is new to them).
        """
        self.counters.events_received += 1
        self.last_seq = max(self.last_seq, seq)
        moved = old_owner_id is not None and old_owner_id != owner_id
        owner_frame = frame_with_op(frame, "insert") if moved else frame
        for session in self._by_owner.get(owner_id, ()):
            session.offer_event(txn, seq, owner_frame)
        for session in self._by_owner.get(ALL_OWNERS, ()):
            session.offer_event(txn, seq, frame)
        if old_owner_id is not None and old_owner_id != owner_id:
            losers = self._by_owner.get(old_owner_id)
            if losers:
                gone = delete_frame_for(frame, old_owner_id)
                for session in losers:
                    session.offer_event(txn, seq, gone)

    def publish_quote(self, instrument: str, frame: str) -> None:
        self.counters.quotes_received += 1
        for session in self._by_instrument.get(instrument, ()):
            session.offer(frame)

    def close_all(self, code: int, reason: str) -> None:
        for session in self.sessions:
            session.close(code, reason)

    def identities(self, user_id: int | None = None) -> Identities:
        """Who the open sessions (of one user, or all) are: for a rights check."""
        sessions = self.sessions if user_id is None else self._by_user.get(user_id, set())
        return Identities(
            users={s.user_id for s in sessions},
            tokens={s.token_id for s in sessions if s.token_id is not None},
            web_sessions={s.session_id for s in sessions if s.session_id is not None},
        )

    def identities_of(self, session: Session) -> Identities:
        return Identities(
            users={session.user_id},
            tokens={session.token_id} if session.token_id is not None else set(),
            web_sessions={session.session_id} if session.session_id is not None else set(),
        )

    def apply_rights(self, checked: Identities, rights: Rights) -> None:
        """Apply what the database says now about the `checked` identities, before any
        later event: a deleted user, a revoked token or an ended browser session loses
        its sockets; a demoted staff user loses subscriptions to other owners."""
        for user_id in checked.users:
            for session in list(self._by_user.get(user_id, ())):
                if user_id not in rights.staff:
                    session.close(1008, "account deleted")
                elif session.token_id in checked.tokens and session.token_id not in rights.tokens:
                    session.close(1008, "token revoked")
                elif (session.session_id in checked.web_sessions
                      and session.session_id not in rights.web_sessions):
                    session.close(1008, "logged out")
                elif not rights.staff[user_id] and session.is_staff:
                    self._demote(session)
                else:
                    session.is_staff = rights.staff[user_id]

    def resync_all(self, reason: str) -> None:
        """Tell every orders subscriber that events may have been missed."""
        frame = resync_frame(reason)
        for subscribers in self._by_owner.values():
            for session in subscribers:
                self.counters.resyncs_sent += 1
                session.offer(frame)


def frame_with_op(frame: str, op: str) -> str:
    """The same event frame with another op (an order moving between owners)."""
    event = json.loads(frame)
    event["op"] = op
    return json.dumps(event)


def delete_frame_for(frame: str, old_owner_id: int) -> str:
    """The frame telling `old_owner_id` that an order it may no longer read is gone."""
    event = json.loads(frame)
    order = event["order"]
    return json.dumps(
        {
            "type": "order",
            "op": "delete",
            "seq": event["seq"],
            "ts": event["ts"],
            "cursor": event["cursor"],
            "order": {"id": order["id"], "owner_id": old_owner_id, "version": order["version"]},
        }
    )
