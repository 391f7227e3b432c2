"""Instruments and quotes: the schema's rules, the migration on existing data, quote versions,
GET /api/quotes and /api/pnl, and the `error` frame for an unknown instrument."""

from __future__ import annotations

import os
import secrets
from decimal import Decimal

import psycopg
import pytest

from db.embedded import database_url
from db.migrate import migration_files
from tests.conftest import insert_order, open_socket, terminate_listeners
from tests.support.market import make_instrument, new_symbol, upsert_quote

# -- schema -------------------------------------------------------------------------------


def test_a_crossed_quote_is_refused_with_a_clear_error(sql):
    symbol = make_instrument(sql)
    with pytest.raises(psycopg.errors.CheckViolation, match="quotes_bid_not_above_ask"):
        upsert_quote(sql, symbol, "10.02", "10.01", "10.01")
    upsert_quote(sql, symbol, "10.01", "10.01", "10.01")  # a locked market is fine


def test_a_quote_for_an_unknown_instrument_is_refused(sql):
    with pytest.raises(psycopg.errors.ForeignKeyViolation, match="quotes_instrument_known"):
        upsert_quote(sql, new_symbol("NOPE"), "1", "2", "1.5")


def test_orders_keep_free_text_instruments(sql, make_user):
    symbol = new_symbol("FREE")
    order_id = insert_order(sql, make_user().id, symbol)
    assert sql.execute("SELECT instrument FROM orders WHERE id = %s", (order_id,)).fetchone() == (
        symbol,)
    assert sql.execute("SELECT 1 FROM instruments WHERE symbol = %s", (symbol,)).fetchone() is None


def test_instrument_tick_size_must_be_positive(sql):
    with pytest.raises(psycopg.errors.CheckViolation, match="instruments_tick_size_positive"):
        make_instrument(sql, tick_size="0")


def test_every_write_of_a_quote_takes_a_higher_version_whatever_the_writer_says(sql):
    symbol = make_instrument(sql)
    first = upsert_quote(sql, symbol, "1", "2", "1.5")
    second = upsert_quote(sql, symbol, "1", "2", "1.5")  # the same values: still a write
    assert second > first
    (third,) = sql.execute("UPDATE quotes SET version = 1, last = 1.6 WHERE instrument = %s"
                           " RETURNING version", (symbol,)).fetchone()
    assert third > second
    sql.execute("DELETE FROM quotes WHERE instrument = %s", (symbol,))
    assert upsert_quote(sql, symbol, "1", "2", "1.5") > third  # never reused after a delete


def test_the_migration_keeps_existing_quotes(server_url):
    """0006 on a database with data: quoted symbols become instruments, a crossed quote is
    swapped so the check holds, and every quote gets a version."""
    name = f"orderstream_m6_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        with psycopg.connect(database_url(server_url, name), autocommit=True) as conn:
            files = migration_files()
            index = next(i for i, f in enumerate(files) if f.name.startswith("0006_"))
            for path in files[:index]:
                conn.execute(path.read_text())
            conn.execute("INSERT INTO users (username) VALUES ('m6')")
            conn.execute("INSERT INTO orders (owner_id, instrument, quantity, price)"
                         " SELECT id, 'OLD', 1, 1 FROM users")
            conn.execute("INSERT INTO quotes (instrument, bid, ask, last) VALUES"
                         " ('OLD', 1, 2, 1.5), ('CROSSED', 5, 4, 4.5), ('EMPTY', NULL, NULL, NULL)")
            conn.execute(files[index].read_text())
            assert conn.execute("SELECT symbol FROM instruments ORDER BY symbol").fetchall() == [
                ("CROSSED",), ("EMPTY",), ("OLD",)]
            assert conn.execute("SELECT bid, ask FROM quotes WHERE instrument = 'CROSSED'"
                                ).fetchone() == (Decimal(4), Decimal(5))
            versions = conn.execute("SELECT version FROM quotes").fetchall()
            assert len({v for (v,) in versions}) == 3
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- HTTP ---------------------------------------------------------------------------------


async def test_api_quotes_lists_known_quiet_and_unknown_instruments(http, make_user, sql):
    user = make_user()
    quoted = make_instrument(sql, tick_size="0.05", name="Quoted Inc")
    quiet = make_instrument(sql)
    unknown = new_symbol("UNK")
    version = upsert_quote(sql, quoted, "10.05", "10.10", "10.10")
    response = await http.get("/api/quotes", params={"instruments": f"{quiet},{quoted},{unknown}"},
                              headers=user.auth)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["unknown"] == [unknown]
    first, second = sorted(body["items"], key=lambda i: i["instrument"] != quoted)
    assert first == {"instrument": quoted, "name": "Quoted Inc", "tick_size": "0.05",
                     "bid": "10.05", "ask": "10.10", "last": "10.10", "version": version,
                     "ts": first["ts"]}
    assert isinstance(first["ts"], float | int)
    assert second["instrument"] == quiet
    assert (second["bid"], second["last"], second["version"]) == (None, None, None)

    everything = (await http.get("/api/quotes", headers=user.auth)).json()
    assert {quoted, quiet} <= {i["instrument"] for i in everything["items"]}


@pytest.mark.parametrize("instruments", ["", ",", "A," + "x" * 65, ",".join(
    f"I{i}" for i in range(201))])
async def test_api_quotes_refuses_malformed_lists(http, make_user, instruments):
    response = await http.get("/api/quotes", params={"instruments": instruments},
                              headers=make_user().auth)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request"
    assert "instruments" in response.json()["error"]["fields"]


async def test_api_quotes_needs_authentication(http):
    assert (await http.get("/api/quotes")).status_code == 401


async def test_api_pnl_totals_all_filled_orders_at_the_last_price(http, make_user, sql):
    user = make_user()
    symbol = make_instrument(sql)
    upsert_quote(sql, symbol, "10.00", "10.10", "10.05")
    rows = [("buy", "10", "9.00", "filled"),  # +10.50
            ("sell", "4", "10.30", "partially_filled"),  # +1.00
            ("buy", "100", "1", "new"),  # no position: not counted
            ("buy", "1", "1", "cancelled")]
    for side, quantity, price, status in rows:
        sql.execute("INSERT INTO orders (owner_id, instrument, side, quantity, price, status)"
                    " VALUES (%s, %s, %s, %s, %s, %s)", (user.id, symbol, side, quantity, price,
                                                         status))
    sql.execute("INSERT INTO orders (owner_id, instrument, quantity, price, status)"
                " VALUES (%s, %s, 1, 1, 'filled')", (user.id, new_symbol("NOQ")))
    body = (await http.get("/api/pnl", headers=user.auth)).json()
    assert body == {"total": "11.50", "priced": 2, "unpriced": 1}


# -- WebSocket ----------------------------------------------------------------------------


async def test_an_unknown_instrument_gets_an_error_frame_and_the_known_ones_subscribe(
        server, make_user, sql):
    known = make_instrument(sql)
    unknown = new_symbol("UNK")
    async with open_socket(server, make_user()) as ws:
        await ws.send({"op": "subscribe", "channel": "quotes", "instruments": [unknown]})
        error = await ws.recv_type("error")
        assert error["code"] == "unknown_instrument"
        assert error["message"] == (f'unknown instruments: "{unknown}";'
                                    " known ones are rows of `instruments`")

        await ws.send({"op": "subscribe", "channel": "quotes", "instruments": [unknown, known]})
        error = await ws.recv_type("error")
        assert error["code"] == "unknown_instrument" and known not in error["message"]
        subscribed = await ws.recv_type("subscribed")
        assert subscribed["instruments"] == [known] and subscribed["unknown"] == [unknown]
        version = upsert_quote(sql, known, "1", "1.1", "1.05")
        quote = await ws.recv_type("quote")
        assert (quote["instrument"], quote["version"]) == (known, version)


async def test_snapshot_and_stream_carry_versions(server, make_user, sql):
    symbol = make_instrument(sql)
    old = upsert_quote(sql, symbol, "5.00", "5.10", "5.05")
    async with open_socket(server, make_user()) as ws:
        await ws.send({"op": "subscribe", "channel": "quotes", "instruments": [symbol]})
        await ws.recv_type("subscribed")
        assert (await ws.recv_type("quote"))["version"] == old
        new = upsert_quote(sql, symbol, "5.05", "5.15", "5.10")
        quote = await ws.recv_type("quote")
        assert (quote["version"], quote["last"]) == (new, "5.10")


async def test_a_quote_written_while_the_listener_is_away_still_arrives(own_server, make_user,
                                                                         sql):
    """Quotes have no change log: after a gap the server publishes the current quote of every
    instrument followed, and sessions keep it only if it is newer than what they hold."""
    symbol = make_instrument(sql)
    first = upsert_quote(sql, symbol, "1.00", "1.10", "1.05")
    async with open_socket(own_server, make_user()) as ws:
        await ws.send({"op": "subscribe", "channel": "quotes", "instruments": [symbol]})
        await ws.recv_type("subscribed")
        assert (await ws.recv_type("quote"))["version"] == first
        assert terminate_listeners(sql)
        during = upsert_quote(sql, symbol, "2.00", "2.10", "2.05")  # (probably) unheard
        quote = await ws.recv_type("quote", timeout=10)
        assert (quote["version"], quote["last"]) == (during, "2.05")
        await ws.assert_silent()  # once: not again from the refresh
