"""Route decoded events to the WebSocket sessions allowed to see them.

The hub knows nothing about PostgreSQL: a producer (db/listener.py in the
server, a plain coroutine in tests) calls publish_order/publish_quote with
ready-made frames, and the hub hands each frame, encoded once, to the bounded
queue of every session that may read it.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Literal

ALL_OWNERS: Literal["*"] = "*"
OwnerKey = int | Literal["*"]


def resync_frame(reason: str) -> str:
    return json.dumps({"type": "resync", "reason": reason})


@dataclass
class Counters:
    events_received: int = 0
    quotes_received: int = 0
    frames_queued: int = 0
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
    queue: asyncio.Queue[str] = field(init=False)
    orders_key: OwnerKey | None = None
    instruments: frozenset[str] = frozenset()
    overflows: int = 0

    def __post_init__(self) -> None:
        self.queue = asyncio.Queue(maxsize=self.queue_size)

    def offer(self, frame: str) -> None:
        """Queue a frame without waiting; on overflow drop the backlog and ask for a resync."""
        try:
            self.queue.put_nowait(frame)
            self.counters.frames_queued += 1
        except asyncio.QueueFull:
            self.overflows += 1
            dropped = self.queue.qsize() + 1
            while not self.queue.empty():
                self.queue.get_nowait()
            self.counters.frames_dropped += dropped
            self.counters.resyncs_sent += 1
            self.queue.put_nowait(resync_frame("overflow"))


class Hub:
    """Subscriptions by owner and by instrument, and fan-out of frames to them."""

    def __init__(self, session_queue_size: int = 2000) -> None:
        self.session_queue_size = session_queue_size
        self.counters = Counters()
        self.sessions: set[Session] = set()
        self._by_owner: dict[OwnerKey, set[Session]] = {}
        self._by_instrument: dict[str, set[Session]] = {}
        # Highest seq published so far; `subscribed` frames carry it.
        self.last_seq = 0

    def open_session(self, user_id: int, is_staff: bool) -> Session:
        session = Session(user_id, is_staff, self.session_queue_size, self.counters)
        self.sessions.add(session)
        return session

    def close_session(self, session: Session) -> None:
        self.unsubscribe_orders(session)
        self.unsubscribe_quotes(session)
        self.sessions.discard(session)

    def subscribe_orders(self, session: Session, key: OwnerKey) -> None:
        """Route orders of owner `key` (or of everyone, "*") to the session; replaces its
        previous orders subscription. Authorisation is the caller's job."""
        self.unsubscribe_orders(session)
        self._by_owner.setdefault(key, set()).add(session)
        session.orders_key = key

    def unsubscribe_orders(self, session: Session) -> None:
        key = session.orders_key
        if key is None:
            return
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
        self, seq: int, owner_id: int, old_owner_id: int | None, frame: str
    ) -> None:
        """Deliver one order event. `frame` is the complete text frame for the owner.

        When an update moved the order away from `old_owner_id`, that owner's
        sessions get a delete instead: they may no longer read the order.
        """
        self.counters.events_received += 1
        self.last_seq = max(self.last_seq, seq)
        for session in self._by_owner.get(owner_id, ()):
            session.offer(frame)
        for session in self._by_owner.get(ALL_OWNERS, ()):
            session.offer(frame)
        if old_owner_id is not None and old_owner_id != owner_id:
            losers = self._by_owner.get(old_owner_id)
            if losers:
                gone = _delete_frame_for(frame, old_owner_id)
                for session in losers:
                    session.offer(gone)

    def publish_quote(self, instrument: str, frame: str) -> None:
        self.counters.quotes_received += 1
        for session in self._by_instrument.get(instrument, ()):
            session.offer(frame)

    def resync_all(self, reason: str) -> None:
        """Tell every orders subscriber that events may have been missed."""
        frame = resync_frame(reason)
        for subscribers in self._by_owner.values():
            for session in subscribers:
                self.counters.resyncs_sent += 1
                session.offer(frame)


def _delete_frame_for(frame: str, old_owner_id: int) -> str:
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
