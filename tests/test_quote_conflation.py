"""Quotes are conflated per session and instrument: a session that stops reading gets the
latest quote of each instrument when it reads again, never the backlog and never `resync`;
and subscribing under a fast writer never shows a quote older than one already shown."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from typing import Any

import psycopg
import pytest

from tests.conftest import Socket, open_socket
from tests.support.market import make_instrument, upsert_quote
from tests.support.raw_ws import RawClient

pytestmark = pytest.mark.slow

INSTRUMENTS = 5
QUOTES = 10_000
MAX_FRAMES_PER_INSTRUMENT = 20

# One transaction per quote, 10,000 of them, as fast as PostgreSQL takes them; the last round
# writes last = 1000 + round, so the final quote of each instrument has last 3000.00.
WRITE = """
DO $$
DECLARE
    symbols text[] := %(symbols)s;
    s text;
BEGIN
    FOR round IN 1 .. %(rounds)s LOOP
        FOREACH s IN ARRAY symbols LOOP
            UPDATE quotes SET bid = 999 + round, ask = 1001 + round, last = 1000 + round
                WHERE instrument = s;
            COMMIT;
        END LOOP;
    END LOOP;
END
$$"""


def write_quotes(db_url: str, symbols: list[str], rounds: int) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        # The DO block is a literal (it cannot take parameters): the values are ours.
        conn.execute(WRITE % {"symbols": "ARRAY[" + ",".join(f"'{s}'" for s in symbols) + "]",
                              "rounds": int(rounds)})


def final_versions(sql: psycopg.Connection, symbols: list[str]) -> dict[str, tuple[int, str]]:
    rows = sql.execute("SELECT instrument, version, last::text FROM quotes"
                       " WHERE instrument = ANY(%s)", (symbols,)).fetchall()
    return {name: (version, last) for name, version, last in rows}


async def read_until(ws: Socket, want: dict[str, int], timeout: float) -> dict[str, Any]:
    """Quote frames until each instrument reached its wanted version; the latest per
    instrument. Versions never go backwards."""
    latest: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    while any(latest.get(i, {}).get("version", 0) < v for i, v in want.items()):
        frame = await ws.recv(max(0.01, deadline - time.monotonic()))
        assert frame["type"] == "quote", frame
        held = latest.get(frame["instrument"])
        assert held is None or frame["version"] > held["version"], (held, frame)
        latest[frame["instrument"]] = frame
    return latest


async def test_a_session_that_stops_reading_gets_the_latest_quotes_not_the_backlog(
        server, make_user, sql, db_url):
    user = make_user()
    symbols = [make_instrument(sql) for _ in range(INSTRUMENTS)]
    for symbol in symbols:
        upsert_quote(sql, symbol, "1", "2", "1.5")

    stuck = RawClient(server, user.token)
    try:
        stuck.send_json({"op": "subscribe", "channel": "quotes", "instruments": symbols})
        assert json.loads(stuck.recv_text())["type"] == "subscribed"
        async with open_socket(server, user) as reader:
            await reader.send({"op": "subscribe", "channel": "quotes", "instruments": symbols})
            await reader.recv_type("subscribed")
            # The stuck client reads nothing from here on, while 10,000 quotes are written.
            writer = asyncio.create_task(asyncio.to_thread(
                write_quotes, db_url, symbols, QUOTES // INSTRUMENTS))
            latest: dict[str, Any] = {}

            async def follow() -> None:
                # The reading session keeps up throughout (it reads while the writer writes).
                while not writer.done() or latest_behind():
                    try:
                        frame = await reader.recv(0.2)
                    except TimeoutError:
                        continue
                    held = latest.get(frame["instrument"])
                    assert held is None or frame["version"] > held["version"]
                    latest[frame["instrument"]] = frame

            final: dict[str, tuple[int, str]] = {}

            def latest_behind() -> bool:
                return not final or any(latest.get(s, {}).get("version") != final[s][0]
                                        for s in symbols)

            follower = asyncio.create_task(follow())
            await writer
            written_at = time.monotonic()
            final.update(final_versions(sql, symbols))
            await asyncio.wait_for(follower, 1.0)  # the reader has the final quotes within 1 s
            print(f"\nreader had the final quotes {time.monotonic() - written_at:.3f} s"
                  " after the last commit")
            assert {s: latest[s]["last"] for s in symbols} == {s: final[s][1] for s in symbols}

        # Now the stuck client reads: at most 20 frames per instrument, the last the final one.
        def drain() -> Counter[str]:
            counts: Counter[str] = Counter()
            got: dict[str, dict[str, Any]] = {}
            stuck.send_json({"op": "ping", "id": "end"})
            while True:
                frame = json.loads(stuck.recv_text())
                if frame["type"] == "pong":
                    if all(got.get(s, {}).get("version") == final[s][0] for s in symbols):
                        return counts
                    stuck.send_json({"op": "ping", "id": "end"})  # quotes still on their way
                    continue
                assert frame["type"] == "quote", frame
                held = got.get(frame["instrument"])
                assert held is None or frame["version"] > held["version"]
                got[frame["instrument"]] = frame
                counts[frame["instrument"]] += 1

        counts = await asyncio.to_thread(drain)
        print(f"stuck client received {dict(counts)} quote frames for {QUOTES} quotes")
        assert all(counts[s] <= MAX_FRAMES_PER_INSTRUMENT for s in symbols), counts
    finally:
        stuck.close()


SUBSCRIBERS = 60


async def test_subscribing_under_a_fast_writer_never_shows_an_older_quote(
        server, make_user, sql, db_url):
    """Each new subscription's snapshot and stream agree by version: no version goes back."""
    symbols = [make_instrument(sql) for _ in range(3)]
    for symbol in symbols:
        upsert_quote(sql, symbol, "1", "2", "1.5")
    user = make_user()
    stop = threading.Event()

    def fast_writer() -> int:
        written = 0
        with psycopg.connect(db_url, autocommit=True) as conn:
            while not stop.is_set():
                conn.execute("UPDATE quotes SET last = last + 0.01 WHERE instrument = ANY(%s)",
                             (symbols,))
                written += 1
        return written

    writer = asyncio.create_task(asyncio.to_thread(fast_writer))
    try:
        async def one_subscription() -> int:
            async with open_socket(server, user) as ws:
                await ws.send({"op": "subscribe", "channel": "quotes", "instruments": symbols})
                await ws.recv_type("subscribed")
                seen: dict[str, int] = {}
                frames = 0
                while len(seen) < len(symbols) or frames < 10:
                    frame = await ws.recv_type("quote")
                    held = seen.get(frame["instrument"], 0)
                    assert frame["version"] > held, f"version went back: {held} then {frame}"
                    seen[frame["instrument"]] = frame["version"]
                    frames += 1
                return frames

        for _ in range(SUBSCRIBERS // 20):
            await asyncio.gather(*(one_subscription() for _ in range(20)))
    finally:
        stop.set()
        written = await writer
    assert written > 0
