"""The /ws client protocol: ping, errors that keep the socket open, subscribe/unsubscribe
for orders and quotes, and the limits (frame size, message rate)."""

from __future__ import annotations

import json
import secrets

import pytest
import websockets

from tests.conftest import Socket, insert_order, open_socket
from tests.support.market import make_instrument, upsert_quote


async def assert_alive(ws: Socket) -> None:
    tag = secrets.token_hex(4)
    await ws.send({"op": "ping", "id": tag})
    assert (await ws.recv_type("pong")) == {"type": "pong", "id": tag}


async def test_ping_echoes_the_id(server, make_user):
    async with open_socket(server, make_user()) as ws:
        for ident in (1, "abc", {"nested": [1, 2]}, None, 2**70, 1.5):
            await ws.send({"op": "ping", "id": ident})
            assert await ws.recv_type("pong") == {"type": "pong", "id": ident}
        await ws.send({"op": "ping"})
        assert await ws.recv_type("pong") == {"type": "pong", "id": None}


@pytest.mark.parametrize(("raw", "code"), [
    ('{"op": "dance"}', "unknown_op"),
    ("{}", "unknown_op"),
    ('{"op": ["ping"]}', "unknown_op"),
    ("not json", "bad_json"),
    ('{"op": "ping"', "bad_json"),
    ("", "bad_json"),
    ("[1, 2]", "bad_request"),
    ('"ping"', "bad_request"),
    ("null", "bad_request"),
    ('{"op": "subscribe", "channel": "gossip"}', "bad_request"),
    ('{"op": "subscribe"}', "bad_request"),
    ('{"op": "unsubscribe", "channel": 7}', "bad_request"),
    ('{"op": "subscribe", "channel": "orders", "owner": "me"}', "bad_request"),
    ('{"op": "subscribe", "channel": "orders", "owner": true}', "bad_request"),
    ('{"op": "subscribe", "channel": "orders", "owner": -1}', "bad_request"),
    ('{"op": "subscribe", "channel": "quotes"}', "bad_request"),
    ('{"op": "subscribe", "channel": "quotes", "instruments": []}', "bad_request"),
    ('{"op": "subscribe", "channel": "quotes", "instruments": "ACME"}', "bad_request"),
    ('{"op": "subscribe", "channel": "quotes", "instruments": [1]}', "bad_request"),
    ('{"op": "subscribe", "channel": "quotes", "instruments": [""]}', "bad_request"),
])
async def test_bad_frames_get_an_error_and_the_socket_stays_open(server, make_user, raw, code):
    async with open_socket(server, make_user()) as ws:
        await ws.conn.send(raw)
        error = await ws.recv_type("error")
        assert error["code"] == code, error
        assert isinstance(error["message"], str) and error["message"]
        await assert_alive(ws)


async def test_errors_show_the_bad_value_as_json(server, make_user):
    """null, true and "text" as the client sent them, not Python's None, True and 'text'."""
    async with open_socket(server, make_user()) as ws:
        for message, says in (
                ({"op": "subscribe", "channel": "orders", "batch": None},
                 "batch must be true or false, got null"),
                ({"op": "subscribe", "channel": "orders", "owner": True},
                 'owner must be a user id or "*", got true'),
                ({"op": "subscribe", "channel": "gossip"},
                 'unknown channel "gossip"; expected "orders" or "quotes"'),
                ({"op": False}, "unknown op false; expected subscribe, unsubscribe or ping"),
                ({}, "a frame needs an op: subscribe, unsubscribe or ping"),
                ({"op": "subscribe"}, 'subscribe needs a channel: "orders" or "quotes"'),
                ({"op": "unsubscribe"}, 'unsubscribe needs a channel: "orders" or "quotes"'),
                ({"op": "subscribe", "channel": "quotes", "instruments": ["NOPE"]},
                 'unknown instruments: "NOPE"; known ones are rows of `instruments`'),
                ({"op": "subscribe", "channel": "orders", "after": None},
                 "cursor must be a string from an order event, of at most 4096 characters,"
                 " got null"),
                ({"op": "subscribe", "channel": "orders", "after": "x" * 5000},
                 "cursor must be a string from an order event, of at most 4096 characters,"
                 ' got "' + "x" * 80 + '..."'),
                ({"op": "subscribe", "channel": "orders", "after": "yesterday"},
                 'not a cursor, got "yesterday"')):
            await ws.send(message)
            assert (await ws.recv_type("error"))["message"] == says
        # Named, not dumped: as deep as a frame may nest (json.dumps would recurse past
        # Python's limit where json.loads did not).
        deep = "[" * 950 + "]" * 950
        await ws.conn.send('{"op": "subscribe", "channel": "orders", "owner": ' + deep + "}")
        assert (await ws.recv_type("error"))["message"] == (
            'owner must be a user id or "*", got an array')
        await assert_alive(ws)


async def test_an_owner_past_bigint_is_refused_not_left_to_fail_in_the_database(
        server, make_user, sql):
    """Before, a staff resume for such an owner was acknowledged and then read the log in a
    loop the database refused (bigint out of range), the client waiting in silence."""
    boss = make_user(staff=True)
    async with open_socket(server, boss) as ws:
        for owner in (2**63, 10**20):
            cursor = (await ws.subscribe_orders())["cursor"]
            await ws.send({"op": "unsubscribe", "channel": "orders"})
            await ws.recv_type("unsubscribed")
            await ws.send({"op": "subscribe", "channel": "orders", "owner": owner,
                           "after": cursor})
            error = await ws.recv_type("error")
            assert error == {"type": "error", "code": "bad_request",
                             "message": f'owner must be a user id or "*", got {owner}'}
        await assert_alive(ws)
        # The largest bigint is an id like any other.
        await ws.send({"op": "subscribe", "channel": "orders", "owner": 2**63 - 1})
        assert (await ws.recv_type("subscribed"))["owner"] == 2**63 - 1


async def test_binary_frame_gets_an_error(server, make_user):
    async with open_socket(server, make_user()) as ws:
        await ws.conn.send(json.dumps({"op": "ping", "id": 1}).encode())
        error = await ws.recv_type("error")
        assert error["code"] == "bad_request" and "binary" in error["message"]
        await assert_alive(ws)


async def test_subscribe_then_unsubscribe_orders(server, make_user, sql):
    alice = make_user()
    async with open_socket(server, alice) as ws:
        subscribed = await ws.subscribe_orders()
        assert subscribed["channel"] == "orders" and subscribed["owner"] == alice.id
        first = insert_order(sql, alice.id, "SUBBED")
        assert (await ws.recv_type("order"))["order"]["id"] == first

        await ws.send({"op": "unsubscribe", "channel": "orders"})
        assert await ws.recv_type("unsubscribed") == {"type": "unsubscribed",
                                                      "channel": "orders"}
        insert_order(sql, alice.id, "UNSUBBED")
        sql.execute("UPDATE orders SET price = 2 WHERE id = %s", (first,))
        await ws.assert_silent()
        await assert_alive(ws)

        # Subscribing again picks the stream up from then on.
        await ws.subscribe_orders()
        again = insert_order(sql, alice.id, "RESUBBED")
        event = await ws.recv_type("order")
        assert event["order"]["id"] == again and event["order"]["instrument"] == "RESUBBED"
        await ws.assert_silent()


async def test_unsubscribe_without_subscription_is_harmless(server, make_user):
    async with open_socket(server, make_user()) as ws:
        for channel in ("orders", "quotes"):
            await ws.send({"op": "unsubscribe", "channel": channel})
            assert (await ws.recv_type("unsubscribed"))["channel"] == channel
        await assert_alive(ws)


async def test_quotes_reach_subscribers_of_that_instrument_only(server, make_user, sql):
    tag = secrets.token_hex(3).upper()
    wanted, other = f"QA{tag}", f"QB{tag}"
    make_instrument(sql, wanted)
    make_instrument(sql, other)
    async with (
        open_socket(server, make_user()) as ws,
        open_socket(server, make_user()) as other_ws,
        open_socket(server, make_user()) as no_quotes_ws,
    ):
        await ws.send({"op": "subscribe", "channel": "quotes", "instruments": [wanted]})
        subscribed = await ws.recv_type("subscribed")
        assert subscribed["channel"] == "quotes" and subscribed["instruments"] == [wanted]
        await other_ws.send({"op": "subscribe", "channel": "quotes", "instruments": [other]})
        await other_ws.recv_type("subscribed")
        await no_quotes_ws.subscribe_orders()

        upsert_quote(sql, wanted, "101.250", "101.30", "101.275")
        quote = await ws.recv_type("quote")
        assert quote["instrument"] == wanted
        assert (quote["bid"], quote["ask"], quote["last"]) == ("101.250", "101.30", "101.275")
        assert isinstance(quote["ts"], int | float)

        upsert_quote(sql, wanted, "102", "102.5", "102.25")  # the update path of the upsert
        quote = await ws.recv_type("quote")
        assert (quote["bid"], quote["ask"], quote["last"]) == ("102", "102.5", "102.25")

        await other_ws.assert_silent()
        await no_quotes_ws.assert_silent(0.1)

        upsert_quote(sql, other, "1", "2", "1.5")
        assert (await other_ws.recv_type("quote"))["instrument"] == other
        await ws.assert_silent()


async def test_quote_subscription_gets_a_snapshot_then_unsubscribe_stops_it(server, make_user,
                                                                            sql):
    instrument = make_instrument(sql)
    upsert_quote(sql, instrument, "5.00", "5.10", "5.05")
    async with open_socket(server, make_user()) as ws:
        await ws.send({"op": "subscribe", "channel": "quotes", "instruments": [instrument]})
        await ws.recv_type("subscribed")
        snapshot = await ws.recv_type("quote")
        assert (snapshot["instrument"], snapshot["bid"], snapshot["last"]) == (
            instrument, "5.00", "5.05")
        await ws.send({"op": "unsubscribe", "channel": "quotes"})
        await ws.recv_type("unsubscribed")
        upsert_quote(sql, instrument, "6", "6.1", "6.05")
        await ws.assert_silent()


async def test_frame_over_16_kib_is_refused(server, make_user):
    async with open_socket(server, make_user()) as ws:
        big = json.dumps({"op": "ping", "id": "x" * (16 * 1024)})
        await ws.conn.send(big)
        error = await ws.recv_type("error")
        assert error["code"] == "too_large"
        await assert_alive(ws)
        # Just under the limit is fine.
        fits = {"op": "ping", "id": "y" * (16 * 1024 - 40)}
        assert len(json.dumps(fits)) <= 16 * 1024
        await ws.send(fits)
        assert (await ws.recv_type("pong"))["id"] == fits["id"]


async def test_flood_is_rate_limited_then_closed(server, make_user):
    async with open_socket(server, make_user()) as ws:
        for i in range(200):
            try:
                await ws.send({"op": "ping", "id": i})
            except websockets.ConnectionClosed:
                break
        pongs, limited = 0, 0
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                frame = await ws.recv()
                if frame["type"] == "pong":
                    pongs += 1
                else:
                    assert frame["type"] == "error" and frame["code"] == "rate_limited", frame
                    limited += 1
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        assert pongs >= 20 and limited >= 1
    # One client's flood does not affect another's socket.
    async with open_socket(server, make_user()) as calm:
        await assert_alive(calm)


async def test_batch_subscription_packs_waiting_events_and_leaves_others_alone(
        server, make_user, sql):
    """With "batch": true, events waiting together arrive as one `batch` frame (each event
    exactly as it would arrive alone); without it, frames stay as they are."""
    alice = make_user()
    async with open_socket(server, alice) as batched, open_socket(server, alice) as plain:
        subscribed = await batched.subscribe_orders(batch=True)
        assert subscribed["batch"] is True
        assert "batch" not in await plain.subscribe_orders()
        sql.execute("INSERT INTO orders (owner_id, instrument, quantity, price)"
                    " SELECT %s, 'B' || g, 1, g FROM generate_series(1, 300) g", (alice.id,))
        singles = [await plain.recv_type("order") for _ in range(300)]
        events: list[dict] = []
        frames = 0
        while len(events) < 300:
            frame = await batched.recv()
            frames += 1
            if frame["type"] == "batch":
                events.extend(frame["events"])
            else:
                assert frame["type"] == "order", frame
                events.append(frame)
        assert events == singles  # same events, same order, same cursors
        assert frames < 300  # some were packed
        await batched.send({"op": "ping", "id": 1})
        assert (await batched.recv_type("pong"))["id"] == 1
        await batched.send({"op": "subscribe", "channel": "orders", "batch": "yes"})
        assert (await batched.recv_type("error"))["code"] == "bad_request"
