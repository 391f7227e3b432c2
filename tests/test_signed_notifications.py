"""Any role that can connect may NOTIFY. The triggers sign what they send on 'orders' and
'quotes' (HMAC under notification_key, which writers cannot read); the listener ignores the
rest, and a copy of a real truncate. A correctly signed payload that claims a future
transaction (a leaked key) is still caught by the position check and answered with resync.
A writer can neither read the key nor see the pads in plan dumps."""

from __future__ import annotations

import hmac
import json
import secrets

import psycopg
import pytest

from db.signing import NotificationKey
from tests.conftest import ServerProcess, insert_order, metrics, open_socket
from tests.support.database import new_user, own_database
from tests.support.market import make_instrument, upsert_quote


def notification_key(conn: psycopg.Connection) -> bytes:
    row = conn.execute("SELECT key FROM notification_key").fetchone()
    assert row is not None
    return bytes(row[0])


async def test_unsigned_or_wrongly_signed_notifications_are_ignored(own_server, make_user, sql):
    alice = make_user()
    async with open_socket(own_server, alice) as ws:
        await ws.subscribe_orders()
        real = insert_order(sql, alice.id, "REAL")
        event = await ws.recv_type("order")
        assert event["order"]["id"] == real
        xid = int(sql.execute("SELECT pg_current_xact_id()::text").fetchone()[0])
        fake = dict(event["order"], instrument="FORGED", price="1")
        forged_frame = json.dumps({"type": "order", "op": "update", "seq": 10**9,
                                   "ts": event["ts"], "order": fake})
        plausible = f"999999999 {xid} {xid}:{xid}: {alice.id} - {forged_frame}"
        for payload in (
            plausible,  # unsigned, shaped like the real thing
            "1 999999999998 1:999999999999: 999999 - {}",  # the old future-xid forgery
            "truncate 999999999",  # would tell every session to reload
            # signed, not with the key
            NotificationKey(secrets.token_bytes(64)).sign("orders", plausible),
            # signed for another channel
            NotificationKey(notification_key(sql)).sign("quotes", plausible),
            "0" * 32 + " " + plausible,  # a tag of the right shape
            "\u00e9" * 32 + " " + plausible,  # one compare_digest refuses to compare as str
        ):
            sql.execute("SELECT pg_notify('orders', %s)", (payload,))
        # Nothing reaches the socket: the next frame is the next real change.
        later = insert_order(sql, alice.id, "LATER")
        after = await ws.recv_type("order")
        assert after["order"]["id"] == later, after
    counters = await metrics(own_server)
    assert counters["orderstream_notifications_rejected_total"] == 7
    assert counters["orderstream_resyncs_sent_total"] == 0
    assert counters["orderstream_forged_notifications_total"] == 0


async def test_a_notification_on_auth_that_names_no_user_is_ignored(own_server, make_user, sql):
    """'auth' is unsigned (it only names whose rights to re-read): a payload of any other
    shape changes nothing and sends no server to read the change log."""
    alice = make_user()
    async with open_socket(own_server, alice) as ws:
        await ws.subscribe_orders()
        before = await metrics(own_server)
        for payload in ("x", "[]", '{"user_id": "1"}', '{"user_id": true}', "{}"):
            sql.execute("SELECT pg_notify('auth', %s)", (payload,))
        # Queued behind them for the listener: once it arrives, they have been handled.
        order_id = insert_order(sql, alice.id, "AFTER_AUTH_NOISE")
        assert (await ws.recv_type("order"))["order"]["id"] == order_id
    after = await metrics(own_server)
    replays = "orderstream_listener_replays_total"
    assert after[replays] == before[replays]
    assert after["orderstream_resyncs_sent_total"] == 0


async def test_a_signed_notification_past_the_database_resets_with_resync(own_server, make_user,
                                                                          sql):
    """Were the key to leak, a signed payload naming a transaction far in the future would
    move the listener's position past every real change; the position check sees it past
    the database's own, resets it, and sessions are told to reload."""
    alice = make_user()
    key = NotificationKey(notification_key(sql))
    async with open_socket(own_server, alice) as ws:
        await ws.subscribe_orders()
        sql.execute("SELECT pg_notify('orders', %s)",
                    (key.sign("orders", "1 999999999998 1:999999999999: 999999 - {}"),))
        resync = await ws.recv_type("resync", timeout=5)
        assert resync["reason"] == "forged notification"
        order_id = insert_order(sql, alice.id, "AFTER_RESET")
        assert (await ws.recv_type("order"))["order"]["id"] == order_id
    assert (await metrics(own_server))["orderstream_forged_notifications_total"] == 1


def test_the_triggers_sign_what_they_send_the_way_the_listener_checks(db_url, make_user):
    """SQL's HMAC and Python's agree, for every kind of notification and any text."""
    alice = make_user()
    with psycopg.connect(db_url, autocommit=True) as listen, \
            psycopg.connect(db_url, autocommit=True) as sql:
        key = NotificationKey(notification_key(sql))
        listen.execute("LISTEN orders")
        order_id = insert_order(sql, alice.id, "ÄÖÜ-€-日本")
        sql.execute("UPDATE orders SET note = %s WHERE id = %s",
                    ("naïve \"quotes\" \\ 🙂", order_id))
        sql.execute("UPDATE orders SET quantity = quantity + 1 WHERE id = ANY(%s)",
                    ([insert_order(sql, alice.id, "MULTI") for _ in range(3)],))
        sql.execute("INSERT INTO orders (owner_id, instrument, quantity, price)"
                    " SELECT %s, 'BULK', 1, 1 FROM generate_series(1, 150)", (alice.id,))
        received = [n.payload for n in listen.notifies(timeout=5, stop_after=9)]
    assert len(received) == 9
    opened = [key.open("orders", payload) for payload in received]
    assert None not in opened, received
    assert opened[-1].endswith(" bulk")  # type: ignore[union-attr]
    assert "ÄÖÜ-€-日本" in opened[0]  # type: ignore[operator]
    # The signature covers the payload: one changed character and it is refused.
    tampered = received[0].replace("ÄÖÜ", "AOU")
    assert key.open("orders", tampered) is None


def test_writers_cannot_read_the_key_or_write_the_log(db_url):
    """The privileges migrate sets up: nothing granted to PUBLIC on the key, the log, or the
    signing trigger functions."""
    with psycopg.connect(db_url, autocommit=True) as sql:
        for table in ("notification_key", "order_changes"):
            granted = sql.execute(
                "SELECT has_table_privilege('public', %s, 'SELECT')"
                " OR has_table_privilege('public', %s, 'INSERT')", (table, table)).fetchone()
            assert granted == (False,), table
        for function in ("orderstream_orders_changed()", "orderstream_orders_truncated()"):
            assert sql.execute("SELECT has_function_privilege('public', %s, 'EXECUTE')",
                               (function,)).fetchone() == (False,), function



async def test_an_unsigned_quote_is_ignored_and_a_signed_one_delivered(own_server, make_user,
                                                                       sql):
    symbol = make_instrument(sql)
    alice = make_user()
    async with open_socket(own_server, alice) as ws:
        await ws.send({"op": "subscribe", "channel": "quotes", "instruments": [symbol]})
        await ws.recv_type("subscribed")
        forged = json.dumps({"type": "quote", "instrument": symbol, "bid": "1", "ask": "2",
                             "last": "1.5", "version": 10**15, "ts": 0})
        sql.execute("SELECT pg_notify('quotes', %s)", (forged,))
        version = upsert_quote(sql, symbol, "100.00", "100.02", "100.01")
        quote = await ws.recv_type("quote")
        assert (quote["version"], quote["last"]) == (version, "100.01"), quote
    assert (await metrics(own_server))["orderstream_notifications_rejected_total"] == 1


async def test_a_replayed_truncate_is_acted_on_once(own_server, server_url):
    """Anyone may LISTEN and keep a copy of a real, signed truncate notification; sending it
    again must not make every session reload again."""
    with own_database(server_url, "replay") as url:
        user = new_user(url, prefix="replay")
        proc = ServerProcess(url, own_server.data_dir)
        proc.start()
        try:
            with psycopg.connect(url, autocommit=True) as sql, \
                    psycopg.connect(url, autocommit=True) as listen:
                listen.execute("LISTEN orders")
                async with open_socket(proc, user) as ws:
                    await ws.subscribe_orders()
                    sql.execute("TRUNCATE orders")
                    assert (await ws.recv_type("resync"))["reason"] == "orders truncated"
                    (captured,) = [n.payload for n in listen.notifies(timeout=5, stop_after=1)]
                    assert " truncate " in captured
                    sql.execute("SELECT pg_notify('orders', %s)", (captured,))
                    later = insert_order(sql, user.id, "AFTER_REPLAY")
                    assert (await ws.recv_type("order"))["order"]["id"] == later
        finally:
            proc.stop()


@pytest.mark.parametrize("length", [0, 1, 32, 63, 64, 65, 200])
def test_the_keys_pads_give_rfc_2104s_hmac_for_any_key_length(length):
    """The pads are hashed once; a tag is HMAC-SHA256 all the same, long keys hashed first."""
    key = secrets.token_bytes(length)
    for payload in ("", "1 2 3:4: 5 - {}", "\u00e9\u65e5\U0001f642" * 300):
        expected = hmac.new(key, f"orders {payload}".encode(), "sha256").hexdigest()[:32]
        assert NotificationKey(key).tag("orders", payload) == expected
        assert NotificationKey(key).open("orders", f"{expected} {payload}") == payload
    # Tagging leaves the keyed states as they were: the same tag twice.
    signer = NotificationKey(key)
    assert signer.sign("quotes", "x") == signer.sign("quotes", "x")


def test_a_writer_sees_no_pads_in_plan_dumps(db_url, make_user):
    """A value passed into a planned statement shows in debug_print_plan, which any session
    may turn on for itself: the pads are read inside the signing function, never passed."""
    alice = make_user()
    with psycopg.connect(db_url, autocommit=True) as sql:
        key = notification_key(sql)
        pads = [bytes(b ^ 0x36 for b in key).hex(), bytes(b ^ 0x5C for b in key).hex()]
        dumped: list[str] = []
        sql.add_notice_handler(lambda notice: dumped.append(
            f"{notice.message_primary or ''} {notice.message_detail or ''}"))
        sql.execute("SET client_min_messages = log")
        sql.execute("SET debug_print_plan = on")
        ids = [insert_order(sql, alice.id, "PLAN") for _ in range(3)]
        for _ in range(7):  # past plpgsql's custom plans
            sql.execute("UPDATE orders SET quantity = quantity + 1 WHERE id = ANY(%s)", (ids,))
            sql.execute("UPDATE orders SET quantity = quantity + 1 WHERE id = %s", (ids[0],))
        sql.execute("RESET debug_print_plan")
    text = "\n".join(dumped)
    assert ":consttype" in text, "no plan was dumped: the test would prove nothing"
    for pad in pads:
        # A bytea constant is dumped as its bytes in decimal, as signed chars (and the code
        # that passed the pads as values showed them so).
        raw = bytes.fromhex(pad)[:8]
        signed = " ".join(str(b - 256 if b > 127 else b) for b in raw)
        assert pad[:16] not in text and signed not in text
