"""The hub alone, fed by a plain producer and an in-memory change log: routing by owner,
staff views, queues bounded in bytes, falling behind and rejoining, resumes, rights."""

from __future__ import annotations

import asyncio
import json

from db.change import RESYNC_REASONS, Change, ResyncReason
from db.position import Position, Snapshot
from db.rights import Rights
from tests.support.memory_log import MemoryLog
from web.frames import ALL_OWNERS
from web.hub import Hub
from web.subscriber import CLOSE, Mode


class Stream:
    """Writes as the listener would publish them: each change committed, in order."""

    def __init__(self, hub: Hub, log: MemoryLog) -> None:
        self.hub, self.log = hub, log
        self.xid = 100
        self.seq = 0

    def change(self, owner: int, order_id: int = 1, version: int = 1,
               old_owner: int | None = None, note: str = "", publish: bool = True) -> Change:
        self.xid += 1
        self.seq += 1
        frame = json.dumps({"type": "order", "op": "update", "seq": self.seq, "ts": 1.5,
                            "order": {"id": order_id, "owner_id": owner, "version": version,
                                      "note": note}})
        change = Change(self.seq, self.xid, owner, old_owner, frame)
        self.log.commit(change)
        if publish:
            position = self.hub.position.after_change(change.xid, change.seq,
                                                      Snapshot(change.xid))
            self.hub.publish(change, position)
        return change


def make(queue_bytes: int = 1 << 20) -> tuple[Hub, MemoryLog, Stream]:
    log = MemoryLog()
    hub = Hub(log, queue_bytes)
    return hub, log, Stream(hub, log)


def queued(sub) -> list[dict]:
    """Take what is queued without waiting."""
    out = []
    while len(sub.queue):
        frame = sub.queue._frames[0][0]
        out.append(frame)
        sub.queue._frames.popleft()
        sub.queue.bytes -= len(frame) + 64
    sub.queue.clear()
    return [json.loads(f) if f is not CLOSE else f for f in out]


async def read_all(sub, want: int, timeout: float = 5.0) -> list[dict]:
    """Drain as a reading socket would until `want` order frames came."""
    out: list[dict] = []

    async def take() -> None:
        while sum(f.get("type") == "order" for f in out) < want:
            out.append(json.loads(await sub.queue.get()))

    await asyncio.wait_for(take(), timeout)
    return out


async def test_routes_by_owner_and_to_staff_watchers():
    hub, _, stream = make()
    async with hub.subscriber(1, False) as alice, hub.subscriber(2, False) as bob, \
            hub.subscriber(9, True) as staff_all, hub.subscriber(9, True) as staff_bob:
        hub.subscribe_orders(alice, 1)
        hub.subscribe_orders(bob, 2)
        hub.subscribe_orders(staff_all, ALL_OWNERS)
        hub.subscribe_orders(staff_bob, 2)
        stream.change(1)
        stream.change(2)
        assert [f["seq"] for f in queued(alice)] == [1]
        assert [f["seq"] for f in queued(bob)] == [2]
        assert [f["seq"] for f in queued(staff_all)] == [1, 2]
        assert [f["seq"] for f in queued(staff_bob)] == [2]
        assert hub.last_seq == 2
    assert not hub.subscribers and not hub._by_owner


async def test_a_move_is_a_tombstone_for_the_old_owner_and_an_insert_for_the_new():
    hub, _, stream = make()
    async with hub.subscriber(1, False) as old, hub.subscriber(2, False) as new:
        hub.subscribe_orders(old, 1)
        hub.subscribe_orders(new, 2)
        stream.change(2, order_id=7, version=3, old_owner=1)
        [gone] = queued(old)
        assert gone["op"] == "delete" and gone["order"] == {"id": 7, "owner_id": 1, "version": 3}
        [arrived] = queued(new)
        assert arrived["op"] == "insert" and arrived["order"]["version"] == 3
        assert gone["cursor"] == arrived["cursor"] == hub.position.cursor()


async def test_a_slow_subscriber_falls_behind_reads_the_log_and_rejoins_without_resync():
    hub, log, stream = make(queue_bytes=4000)
    async with hub.subscriber(1, False) as slow, hub.subscriber(1, False) as fast:
        hub.subscribe_orders(slow, 1)
        hub.subscribe_orders(fast, 1)
        got_fast: list[dict] = []
        for round_ in range(10):
            for _ in range(20):
                stream.change(1, order_id=round_)
            got_fast += await read_all(fast, 20)  # the fast one keeps up
        assert slow.mode is Mode.BEHIND and slow.queue.bytes <= 4000
        catching_up = slow.catch_up
        assert catching_up is not None
        got = await read_all(slow, 200)  # now it reads: the log brings the rest
        orders = [f for f in got if f["type"] == "order"]
        assert [f["seq"] for f in orders] == list(range(1, 201))  # all, once, in order
        assert not [f for f in got if f["type"] == "resync"]
        assert [f["seq"] for f in got_fast] == list(range(1, 201))
        # Rejoined: the next change comes live, its cursor the stream's. (Until the stream
        # starts another transaction, the log read is a little ahead of it.)
        await asyncio.wait_for(catching_up, 2)
        assert slow.mode in (Mode.AHEAD, Mode.CURRENT)
        stream.change(1)
        [live] = queued(slow)
        assert live["seq"] == 201 and live["cursor"] == hub.position.cursor()
        assert slow.mode is Mode.CURRENT
        assert log.reads >= 2
        assert hub.counters.resyncs_sent == 0


async def test_changes_published_while_a_read_is_out_are_not_lost():
    hub, log, stream = make()
    async with hub.subscriber(1, False) as sub:
        first = stream.change(1, publish=False)
        log.gate = asyncio.Event()
        hub.subscribe_orders(sub, 1, after=Position(first.xid))  # resume: reads the log
        async with asyncio.timeout(2):
            while sub.held is None:  # until its read is out (it holds live events meanwhile)
                await asyncio.sleep(0)
        stream.change(1)  # published while the read waits
        stream.change(1)
        log.gate.set()
        got = await read_all(sub, 3)
        assert [f["seq"] for f in got] == [1, 2, 3]
        stream.change(1)
        assert [f["seq"] for f in queued(sub)] == [4]
        assert sub.mode is Mode.CURRENT


async def test_a_resume_ahead_of_this_process_skips_what_its_cursor_covers():
    hub, _, stream = make()
    async with hub.subscriber(1, False) as sub:
        behind = [stream.change(1, publish=False) for _ in range(3)]
        # The client's cursor (from a process that was ahead) covers all three.
        client = Position(behind[-1].xid + 1)
        hub.subscribe_orders(sub, 1, after=client)
        catching_up = sub.catch_up
        assert catching_up is not None
        await asyncio.wait_for(catching_up, 2)  # its read found nothing it lacks: rejoined
        assert sub.mode is Mode.AHEAD
        for change in behind:  # this process now publishes what the client has
            hub.publish(change, hub.position.after_change(change.xid, change.seq,
                                                          Snapshot(change.xid)))
        assert queued(sub) == []
        stream.change(1)
        assert [f["seq"] for f in queued(sub)] == [4]
        assert sub.mode is Mode.CURRENT


async def test_a_cursor_the_log_no_longer_covers_gets_resync_then_live():
    hub, log, stream = make()
    log.expired_below = 1000
    async with hub.subscriber(1, False) as sub:
        hub.subscribe_orders(sub, 1, after=Position(5))
        catching_up = sub.catch_up
        assert catching_up is not None
        got = await asyncio.wait_for(sub.queue.get(), 2)
        assert json.loads(got) == {"type": "resync", "reason": ResyncReason.EXPIRED}
        await asyncio.wait_for(catching_up, 2)  # rejoined
        stream.change(1)
        assert [f["seq"] for f in queued(sub)] == [1]


async def test_an_ahead_subscriber_gets_every_event_after_a_resync_for_a_lost_log():
    """A session whose read saw transactions the listener never published (the primary was
    lost first) is ahead of the hub. After the loss, the new primary hands those xids out
    again: once told to resync, the session must get them, not skip them as seen."""
    hub, _, stream = make()
    async with hub.subscriber(1, False) as sub:
        hub.subscribe_orders(sub, 1)
        stream.change(1)
        queued(sub)
        sub.mode, sub.position = Mode.AHEAD, Position(stream.xid + 100)
        hub.resync_all(ResyncReason.EXPIRED)
        assert queued(sub) == [{"type": "resync", "reason": "cursor expired"}]
        hub.advance(Position(generation=7).merge(Snapshot(stream.xid)))
        stream.change(1)  # an xid below the old position's xmax
        assert [f["seq"] for f in queued(sub)] == [2]
        assert sub.mode is Mode.CURRENT


async def test_an_ahead_subscriber_of_another_generation_skips_nothing():
    hub, _, stream = make()
    async with hub.subscriber(1, False) as sub:
        hub.subscribe_orders(sub, 1)
        hub.advance(Position(generation=7).merge(Snapshot(stream.xid)))
        sub.mode, sub.position = Mode.AHEAD, Position(stream.xid + 100, generation=3)
        stream.change(1)
        assert [f["seq"] for f in queued(sub)] == [1]
        assert sub.mode is Mode.CURRENT


def test_resync_reasons_are_a_fixed_set():
    assert {"orders truncated", "cursor expired", "forged notification"} == RESYNC_REASONS
    assert {v for k, v in vars(ResyncReason).items() if k.isupper()} == RESYNC_REASONS


async def test_resync_all_reaches_only_order_subscribers():
    hub, _, _ = make()
    async with hub.subscriber(1, False) as subscribed, hub.subscriber(2, False) as idle:
        hub.subscribe_orders(subscribed, 1)
        hub.resync_all(ResyncReason.TRUNCATED)
        assert queued(subscribed) == [{"type": "resync", "reason": "orders truncated"}]
        assert queued(idle) == []


async def test_resubscribing_replaces_the_previous_owner():
    hub, _, stream = make()
    async with hub.subscriber(9, True) as s:
        hub.subscribe_orders(s, 1)
        hub.subscribe_orders(s, ALL_OWNERS)
        stream.change(1)
        assert len(queued(s)) == 1  # once, not twice


async def test_a_closing_subscriber_keeps_its_close_through_a_flood():
    hub, _, stream = make(queue_bytes=2000)
    async with hub.subscriber(1, False) as s:
        hub.subscribe_orders(s, 1)
        for _ in range(3):
            stream.change(1)
        s.close(1008, "token revoked")
        for _ in range(50):  # a flood after the close: nothing may displace it
            stream.change(1)
        items = queued(s)
        assert items[-1] is CLOSE and all(i is CLOSE or i["seq"] < 4 for i in items)


async def test_apply_rights_demotes_closes_and_keeps():
    hub, _, _ = make()
    async with hub.subscriber(9, True) as staff, \
            hub.subscriber(2, False, token_id=70) as by_token, \
            hub.subscriber(3, False, web_session_id="abc") as by_cookie, \
            hub.subscriber(4, False) as gone:
        hub.subscribe_orders(staff, ALL_OWNERS)
        hub.apply_rights(hub.identities(), Rights(staff={9: False, 2: False, 3: False},
                                                  tokens=set(), web_sessions={"abc"}))
        assert staff.orders_key is None and not staff.is_staff
        assert queued(staff)[0]["code"] == "forbidden"
        assert by_token.closing and by_token.close_reason == "token revoked"
        assert not by_cookie.closing
        assert gone.closing and gone.close_reason == "account deleted"


async def test_narrow_never_gives_back_what_the_stream_took():
    hub, _, _ = make()
    async with hub.subscriber(9, True) as s:
        hub.subscribe_orders(s, ALL_OWNERS)
        hub.apply_rights(hub.identities(), Rights(staff={9: False}, tokens=set(),
                                                  web_sessions=set()))  # the stream demotes
        hub.narrow(s, Rights(staff={9: True}, tokens=set(), web_sessions=set()))  # older
        assert s.is_staff is False and s.orders_key is None


async def test_a_subscriber_that_never_reads_stays_within_its_budget():
    hub, log, stream = make(queue_bytes=10_000)
    async with hub.subscriber(1, False) as s:
        hub.subscribe_orders(s, 1)
        for _ in range(2000):
            stream.change(1, note="x" * 500)
        catching_up = s.catch_up
        assert catching_up is not None
        # It waits for room in the queue, which never comes: proven by a wait that times out.
        done, _ = await asyncio.wait({catching_up}, timeout=0.1)
        assert not done, "the catch-up ended though the subscriber never read"
        assert log.reads == 0  # nothing read from the log into a full queue
        assert s.queue.bytes <= 10_000 and s.mode is Mode.BEHIND


def _bulk(xid: int, owners: list[int], first_seq: int = 1) -> list[Change]:
    """One statement's changes, as the listener reads them from the log."""
    return [Change(first_seq + i, xid, owner, None,
                   json.dumps({"type": "order", "op": "update", "seq": first_seq + i,
                               "order": {"id": i, "owner_id": owner, "version": 2}}))
            for i, owner in enumerate(owners)]


def _frames(sub) -> list[str]:
    return [frame for frame, _ in sub.queue._frames]


async def test_a_page_of_a_bulk_statement_gives_each_socket_what_one_by_one_would():
    owners = [1, 2, 1, 1, 3, 2]
    queued_by: dict[str, dict[str, list[str]]] = {}
    to_carol: dict[str, list[str]] = {}
    for way in ("one by one", "page"):
        hub, _, _ = make()
        async with hub.subscriber(1, False) as alice, hub.subscriber(2, False) as bob, \
                hub.subscriber(9, True) as everyone, hub.subscriber(9, True) as watching_bob, \
                hub.subscriber(4, False) as dave, hub.subscriber(1, False) as carol:
            hub.subscribe_orders(alice, 1)
            hub.subscribe_orders(bob, 2)
            hub.subscribe_orders(everyone, ALL_OWNERS)
            everyone.batch = True
            hub.subscribe_orders(watching_bob, 2)
            hub.subscribe_orders(dave, 4)
            # Carol's sender waits on an empty queue and her socket takes offers: one by
            # one, her events go straight to it; a page goes through her queue.
            hub.subscribe_orders(carol, 1)
            written: list[str] = []

            def take(frame: str, most_pending: int, into: list[str] = written) -> bool:
                into.append(frame)
                return True

            carol.queue.direct = take
            carol.queue._parked = True
            changes = _bulk(700, owners)
            last, cursors = hub.position.after_changes(700, [c.seq for c in changes],
                                                       Snapshot(700))
            if way == "page":
                assert hub.publish_page(changes, cursors, last)
            else:
                position = hub.position
                for index, change in enumerate(changes):
                    position = position.after_change(700, change.seq,
                                                     Snapshot(700) if index == 0 else None)
                    hub.publish(change, position)
            assert hub.position == last and hub.last_seq == 6
            assert hub.counters.events_received == 6
            to_carol[way] = written + _frames(carol)
            subs = {"alice": alice, "bob": bob, "everyone": everyone,
                    "watching_bob": watching_bob, "dave": dave}
            queued_by[way] = {name: _frames(sub) for name, sub in subs.items()}
            assert {name: sub.queue.bytes for name, sub in subs.items()} == {
                name: sum(len(f) + 64 for f in frames)
                for name, frames in queued_by[way].items()}
    assert queued_by["page"] == queued_by["one by one"]
    page = queued_by["page"]
    assert [json.loads(f)["seq"] for f in page["everyone"]] == [1, 2, 3, 4, 5, 6]
    assert [json.loads(f)["seq"] for f in page["alice"]] == [1, 3, 4]
    assert page["bob"] == page["watching_bob"] and page["dave"] == []
    assert json.loads(page["everyone"][-1])["cursor"] == last.cursor()
    assert to_carol["page"] == to_carol["one by one"] == page["alice"]


async def test_a_page_is_left_to_one_by_one_when_anyone_cannot_take_it_all():
    """A subscriber behind, one short of room, or an order changing owner: nothing is
    queued and the page goes one by one (where each case has its own rule)."""
    hub, _, _ = make(queue_bytes=2000)
    async with hub.subscriber(1, False) as alice, hub.subscriber(9, True) as everyone:
        hub.subscribe_orders(alice, 1)
        hub.subscribe_orders(everyone, ALL_OWNERS)
        start = hub.position

        def attempt(changes: list[Change]) -> bool:
            last, cursors = start.after_changes(changes[0].xid, [c.seq for c in changes])
            return hub.publish_page(changes, cursors, last)

        assert not attempt(_bulk(700, [1] * 30))  # 30 frames pass alice's 2,000 bytes
        moved = _bulk(700, [1, 1])
        moved[1] = moved[1]._replace(old_owner_id=2)
        assert not attempt(moved)
        alice.mode = Mode.BEHIND
        assert not attempt(_bulk(700, [1, 1]))
        assert hub.position == start and hub.counters.events_received == 0
        assert _frames(alice) == _frames(everyone) == []
        # A subscriber on its way out (behind or not) takes nothing and stops no one.
        alice.closing = True
        assert attempt(_bulk(700, [1] * 8))
        assert _frames(alice) == [] and len(_frames(everyone)) == 8
