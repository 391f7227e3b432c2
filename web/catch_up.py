"""The slow lane of one subscriber: read the change log from its own position, a page at a
time as its socket drains, then rejoin the live stream.

While a read is out, the live events the hub publishes are held (within the subscriber's
budget); after a read that found nothing more, those its new position does not cover are
queued behind the page, so nothing committed between the read's snapshot and the rejoin
is lost. If the read saw transactions the hub has not published yet, the subscriber is
AHEAD and skips them when they come live.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from db.change import ResyncReason
from db.failures import recurring
from web.frames import ALL_OWNERS, frame_for, resync_frame, with_cursor
from web.subscriber import Mode, Subscriber

if TYPE_CHECKING:
    from web.hub import Hub

log = logging.getLogger(__name__)

# Rows per page (bytes: half the subscriber's budget).
PAGE_ROWS = 1000
# A failed read is retried after this long, doubling up to the cap (seconds).
RETRY_FIRST, RETRY_CAP = 0.1, 5.0


async def catch_up(hub: Hub, sub: Subscriber, generation: int) -> None:
    """Read the log from the subscriber's position as its socket drains; rejoin the live
    stream once a read found nothing more (held events fill the read's window)."""
    retry = RETRY_FIRST
    key = sub.orders_key
    assert key is not None
    owner = None if key == ALL_OWNERS else key
    while True:
        await sub.queue.wait_room()
        if sub.generation != generation or sub.closing:
            return
        start = sub.position
        assert start is not None
        sub.held, sub.held_bytes = [], 0
        try:
            page = await hub.log_reader.read(start, owner, hub.identities_of(sub),
                                              PAGE_ROWS, max(1, hub.queue_bytes // 2))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            sub.held = None
            if recurring(exc):
                # A bug, or a query the database refuses: retrying would fail the same way
                # forever, the client waiting in silence. With 1011 it reconnects and
                # resumes from its cursor.
                log.exception("catch-up read for user %s failed", sub.user_id)
                sub.close(1011, "internal error")
                return
            # The database is away, busy or timed out: keep the position, try again.
            log.warning("catch-up read for user %s failed (%s); retrying in %.1fs",
                        sub.user_id, exc, retry)
            await asyncio.sleep(retry)
            retry = min(retry * 2, RETRY_CAP)
            continue
        retry = RETRY_FIRST
        hub.counters.log_reads += 1
        if sub.generation != generation or sub.closing:
            return
        if page.rights is not None:
            hub.narrow(sub, page.rights)
            if sub.generation != generation or sub.closing:
                return
        if page.expired:
            hub.counters.resyncs_sent += 1
            sub.queue.put(resync_frame(ResyncReason.EXPIRED))
        for change, position in zip(page.changes, page.positions(start), strict=True):
            shaped = frame_for(key, change, with_cursor(change.frame, position.cursor()))
            if shaped is not None:
                sub.queue.put(shaped, event=True)
        sub.position = page.end(start)
        if page.complete and sub.held is not None:
            _rejoin(hub, sub)
            return
        sub.held = None


def _rejoin(hub: Hub, sub: Subscriber) -> None:
    """After a read that found nothing more: queue the live events published since it
    began that it did not cover, and take live events again."""
    held, sub.held = sub.held or [], None
    position = sub.position
    assert position is not None
    for xid, seq, frame in held:
        if not position.covers(xid, seq):
            sub.queue.put(frame, event=True)
    sub.catch_up = None
    # Everything the hub published is now queued: either read, or held.
    merged = position.union(hub.position)
    if hub.position.includes(merged):
        sub.mode, sub.position = Mode.CURRENT, None
    else:
        sub.mode, sub.position = Mode.AHEAD, merged
