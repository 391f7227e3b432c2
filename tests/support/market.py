"""Instruments and quotes written as any psql user would: the market data tests' writer."""

from __future__ import annotations

import secrets

import psycopg


def new_symbol(prefix: str = "Q") -> str:
    return f"{prefix}{secrets.token_hex(3).upper()}"


def make_instrument(sql: psycopg.Connection, symbol: str | None = None,
                    tick_size: str = "0.01", name: str = "") -> str:
    """An instrument (a fresh symbol unless given); existing ones are left as they are."""
    symbol = symbol or new_symbol()
    sql.execute("INSERT INTO instruments (symbol, name, tick_size) VALUES (%s, %s, %s)"
                " ON CONFLICT (symbol) DO NOTHING", (symbol, name or symbol, tick_size))
    return symbol


def upsert_quote(sql: psycopg.Connection, instrument: str, bid: str, ask: str,
                 last: str) -> int:
    """Write a quote (insert or update); returns its version."""
    row = sql.execute(
        "INSERT INTO quotes (instrument, bid, ask, last) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (instrument) DO UPDATE SET bid = EXCLUDED.bid, ask = EXCLUDED.ask,"
        " last = EXCLUDED.last RETURNING version",
        (instrument, bid, ask, last)).fetchone()
    assert row is not None
    return int(row[0])
