"""The hub alone, fed by a plain producer: routing by owner, staff views, bounded queues."""

from __future__ import annotations

import json

from web.hub import ALL_OWNERS, Hub


def frame(seq: int, owner: int, order_id: int = 1, version: int = 1) -> str:
    return json.dumps({"type": "order", "op": "update", "seq": seq, "ts": 1.5, "cursor": str(seq),
                       "order": {"id": order_id, "owner_id": owner, "version": version}})


def drain(session) -> list[dict]:
    out = []
    while not session.queue.empty():
        out.append(json.loads(session.queue.get_nowait()))
    return out


def test_routes_by_owner_and_to_staff_watchers():
    hub = Hub()
    alice, bob = hub.open_session(1, False), hub.open_session(2, False)
    staff_all, staff_bob = hub.open_session(9, True), hub.open_session(9, True)
    hub.subscribe_orders(alice, 1)
    hub.subscribe_orders(bob, 2)
    hub.subscribe_orders(staff_all, ALL_OWNERS)
    hub.subscribe_orders(staff_bob, 2)

    hub.publish_order(1, 1, 1, None, frame(1, 1))
    hub.publish_order(2, 2, 2, None, frame(2, 2))

    assert [f["seq"] for f in drain(alice)] == [1]
    assert [f["seq"] for f in drain(bob)] == [2]
    assert [f["seq"] for f in drain(staff_all)] == [1, 2]
    assert [f["seq"] for f in drain(staff_bob)] == [2]
    assert hub.last_seq == 2


def test_the_same_frame_object_goes_to_every_session():
    hub = Hub()
    sessions = [hub.open_session(1, False) for _ in range(3)]
    for s in sessions:
        hub.subscribe_orders(s, 1)
    text = frame(1, 1)
    hub.publish_order(1, 1, 1, None, text)
    assert all(s.queue.get_nowait() is text for s in sessions)  # encoded once, shared


def test_owner_change_sends_a_bare_delete_to_the_old_owner():
    hub = Hub()
    old, new = hub.open_session(1, False), hub.open_session(2, False)
    hub.subscribe_orders(old, 1)
    hub.subscribe_orders(new, 2)
    hub.publish_order(5, 5, 2, 1, frame(5, 2, order_id=7, version=3))
    assert drain(new)[0]["order"]["owner_id"] == 2
    gone = drain(old)
    assert gone == [{"type": "order", "op": "delete", "seq": 5, "ts": 1.5, "cursor": "5",
                     "order": {"id": 7, "owner_id": 1, "version": 3}}]


def test_overflow_drops_the_backlog_and_asks_for_resync():
    hub = Hub(session_queue_size=3)
    slow, fast = hub.open_session(1, False), hub.open_session(1, False)
    hub.subscribe_orders(slow, 1)
    hub.subscribe_orders(fast, 1)
    for seq in range(1, 5):
        hub.publish_order(seq, seq, 1, None, frame(seq, 1))
        fast.queue.get_nowait()  # the fast one keeps up
    assert drain(slow) == [{"type": "resync", "reason": "overflow"}]
    assert hub.counters.frames_dropped == 4
    hub.publish_order(5, 5, 1, None, frame(5, 1))
    assert [f["seq"] for f in drain(slow)] == [5]  # still subscribed afterwards


def test_unsubscribe_and_close_remove_every_route():
    hub = Hub()
    s = hub.open_session(1, False)
    hub.subscribe_orders(s, 1)
    hub.subscribe_quotes(s, frozenset({"ACME"}))
    hub.close_session(s)
    hub.publish_order(1, 1, 1, None, frame(1, 1))
    hub.publish_quote("ACME", '{"type":"quote"}')
    assert drain(s) == []
    assert hub.sessions == set() and not hub._by_owner and not hub._by_instrument


def test_resubscribing_replaces_the_previous_owner():
    hub = Hub()
    s = hub.open_session(9, True)
    hub.subscribe_orders(s, 1)
    hub.subscribe_orders(s, ALL_OWNERS)
    hub.publish_order(1, 1, 1, None, frame(1, 1))
    assert len(drain(s)) == 1  # once, not twice


def test_resync_all_reaches_only_order_subscribers():
    hub = Hub()
    subscribed, idle = hub.open_session(1, False), hub.open_session(2, False)
    hub.subscribe_orders(subscribed, 1)
    hub.resync_all("listener reconnected")
    assert drain(subscribed) == [{"type": "resync", "reason": "listener reconnected"}]
    assert drain(idle) == []


def test_a_closing_session_keeps_its_close_through_overflow():
    from web.hub import CLOSE

    hub = Hub(session_queue_size=3)
    s = hub.open_session(1, False)
    hub.subscribe_orders(s, 1)
    for seq in range(1, 4):
        hub.publish_order(seq, seq, 1, None, frame(seq, 1))
    s.close(1008, "token revoked")
    for seq in range(4, 20):  # a flood after the close: nothing may displace it
        hub.publish_order(seq, seq, 1, None, frame(seq, 1))
    items = []
    while not s.queue.empty():
        items.append(s.queue.get_nowait())
    assert items[-1] is CLOSE and all(i is CLOSE or json.loads(i)["seq"] < 4 for i in items)


def test_apply_rights_demotes_closes_and_keeps():
    from db.rights import Rights

    hub = Hub()
    staff = hub.open_session(9, True)
    by_token = hub.open_session(2, False, token_id=70)
    by_cookie = hub.open_session(3, False, session_id="abc")
    gone = hub.open_session(4, False)
    hub.subscribe_orders(staff, ALL_OWNERS)
    who = hub.identities()
    hub.apply_rights(who, Rights(staff={9: False, 2: False, 3: False}, tokens=set(),
                                 web_sessions={"abc"}))
    assert staff.orders_key is None and not staff.is_staff
    assert drain(staff)[0]["code"] == "forbidden"
    assert by_token.closing and by_token.close_reason == "token revoked"
    assert not by_cookie.closing
    assert gone.closing and gone.close_reason == "account deleted"


def test_a_resumed_session_skips_what_it_already_has_from_a_process_that_was_ahead():
    from db.position import Position

    hub = Hub()
    s = hub.open_session(1, False)
    hub.subscribe_orders(s, 1, hold=True)
    # The client's cursor (from another, faster process) covers transaction 5 up to seq 2.
    client_has = Position.parse("5;5.2")
    hub.release_held(s, [], client_has.covers, client_has.highest())
    hub.publish_order(1, 5, 1, None, frame(1, 1))  # this process is still behind
    hub.publish_order(2, 5, 1, None, frame(2, 1))
    hub.publish_order(3, 5, 1, None, frame(3, 1))  # new to the client
    hub.publish_order(4, 6, 1, None, frame(4, 1))
    assert [f["seq"] for f in drain(s)] == [3, 4]
    hub.advance_watermark(7)
    assert s.already_has is None  # past everything the cursor covered


def test_narrow_never_gives_back_what_the_stream_took():
    from db.rights import Rights

    hub = Hub()
    s = hub.open_session(9, True)
    hub.subscribe_orders(s, ALL_OWNERS)
    hub.apply_rights(hub.identities(), Rights(staff={9: False}, tokens=set(),
                                              web_sessions=set()))  # the stream demotes
    hub.narrow(s, Rights(staff={9: True}, tokens=set(), web_sessions=set()))  # older rights
    assert s.is_staff is False and s.orders_key is None


def test_a_new_subscription_forgets_the_previous_resume():
    from db.position import Position

    hub = Hub()
    s = hub.open_session(9, True)
    hub.subscribe_orders(s, 1, hold=True)
    cursor = Position.parse("100")
    hub.release_held(s, [], cursor.covers, cursor.highest())
    hub.subscribe_orders(s, ALL_OWNERS)  # no cursor: everything from now on is new
    hub.publish_order(1, 50, 2, None, frame(1, 2))
    assert [f["seq"] for f in drain(s)] == [1]
