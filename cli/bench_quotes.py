"""python server.py bench --quotes: market data to many sessions, conflated.

1,000 sessions (default), each subscribed to 10 of 100 instruments, while a writer upserts
quotes through plain SQL at a fixed rate. Reported: quotes written per second, quote frames
delivered per second (all sessions together), how many frames conflation saved, and the age
of each delivered quote (trigger time to the client's receive) at p50/p99/max.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import random
import secrets
import time
from multiprocessing.sharedctypes import Synchronized
from typing import Any

import psutil
import psycopg
import websockets

import config
from cli.bench import _now_ms, _pct, _start_server
from cli.bench_fanout import _cpu_seconds
from cli.users import create_token, create_user
from web.passwords import Passwords

PREFIX = "BQ"


def _instruments(count: int) -> list[str]:
    return [f"{PREFIX}{i:03d}" for i in range(count)]


def _write(url: str, symbols: list[str], rate: float, seconds: float,
           written: Synchronized[int]) -> None:
    """Update quotes of random instruments at `rate` per second, one transaction each. Runs in
    a process of its own: in the clients' process it would share their interpreter lock."""
    rng = random.Random(1)
    interval = 1.0 / rate
    with psycopg.connect(url, autocommit=True) as conn:
        started = next_at = time.monotonic()
        while time.monotonic() - started < seconds:
            symbol = rng.choice(symbols)
            conn.execute("UPDATE quotes SET bid = bid + 0.01, ask = ask + 0.01, last = last + 0.01"
                         " WHERE instrument = %s", (symbol,))
            written.value += 1
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)


async def _session(port: int, token: str, symbols: list[str], ages: list[float],
                   counts: list[int], ready: asyncio.Event, go: asyncio.Event) -> None:
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws", max_size=2**22,
                                  additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        await ws.send(json.dumps({"op": "subscribe", "channel": "quotes", "instruments": symbols}))
        snapshot = len(symbols)
        while True:  # the ack, then the snapshot of each instrument
            frame = json.loads(await ws.recv())
            if frame["type"] == "quote":
                snapshot -= 1
                if snapshot == 0:
                    break
        ready.set()
        await go.wait()
        while True:
            text = await ws.recv()
            received = _now_ms()
            frame = json.loads(text)
            if frame.get("type") == "quote":
                counts[0] += 1
                ages.append(received - frame["ts"])


async def _run(url: str, server: psutil.Process, port: int, token: str, symbols: list[str],
               sessions: int, per_session: int, rate: float, seconds: float) -> dict[str, Any]:
    rng = random.Random(2)
    ages: list[float] = []
    counts = [0]
    go = asyncio.Event()
    readies = []
    tasks = []
    fanout = 0
    opened = time.monotonic()
    for i in range(sessions):
        chosen = rng.sample(symbols, per_session)
        fanout += per_session
        ready = asyncio.Event()
        readies.append(ready)
        tasks.append(asyncio.create_task(_session(port, token, chosen, ages, counts, ready, go),
                                         name=f"bench-quotes-{i}"))
        if i % 50 == 49:
            await asyncio.gather(*(r.wait() for r in readies))  # don't stampede the accept queue
    await asyncio.gather(*(r.wait() for r in readies))
    subscribed_in = time.monotonic() - opened
    print(f"  {sessions} sessions x {per_session} of {len(symbols)} instruments subscribed in "
          f"{subscribed_in:.1f} s")
    spawn = multiprocessing.get_context("spawn")
    written = spawn.Value("q", 0)
    writer = spawn.Process(target=_write, args=(url, symbols, rate, seconds, written),
                           name="bench-quotes-writer")
    go.set()
    started = time.monotonic()
    cpu_before = _cpu_seconds(server)
    writer.start()
    await asyncio.to_thread(writer.join)
    wrote_for = time.monotonic() - started
    # Let the last quotes arrive (conflated: the newest of each instrument), then stop.
    await asyncio.sleep(1.0)
    elapsed = time.monotonic() - started
    cpu = _cpu_seconds(server) - cpu_before
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    # Each quote is of interest to this many sessions on average (sessions x 10 / 100).
    interested = fanout / len(symbols)
    quotes = written.value
    unconflated = quotes * interested
    delivered = counts[0]
    print(f"  writer: {quotes} quotes in {wrote_for:.1f} s ({quotes / wrote_for:,.0f}/s,"
          f" target {rate:,.0f}/s), each wanted by {interested:.0f} sessions on average")
    print(f"  delivered: {delivered:,} quote frames ({delivered / elapsed:,.0f}/s over"
          f" {elapsed:.1f} s), {delivered / unconflated:.0%} of the {unconflated:,.0f} an"
          f" unconflated feed would send")
    print(f"  server CPU: {cpu / max(delivered, 1) * 1e6:.1f} us per quote frame delivered")
    if ages:
        print(f"  quote age at the client (trigger -> received): p50 {_pct(ages, 0.5):.1f} ms"
              f"   p99 {_pct(ages, 0.99):.1f} ms   max {max(ages):.1f} ms")
    return {"sessions": sessions, "instruments_per_session": per_session,
            "instruments": len(symbols), "subscribed_in_s": subscribed_in,
            "target_rate": rate, "quotes_written": quotes, "written_per_s": quotes / wrote_for,
            "wanted_by_sessions": interested, "frames_delivered": delivered,
            "frames_per_s": delivered / elapsed, "sent_of_unconflated": delivered / unconflated,
            "server_cpu_us_per_frame": cpu / max(delivered, 1) * 1e6,
            "age_p50_ms": _pct(ages, 0.5), "age_p99_ms": _pct(ages, 0.99),
            "age_max_ms": max(ages, default=float("nan"))}


def measure_quotes(url: str, settings: config.Settings, sessions: int = 1000,
                   per_session: int = 10, instruments: int = 100, rate: float = 1000.0,
                   seconds: float = 5.0) -> dict[str, Any]:
    """Start a server, make a user and the instruments, measure (printing as it goes),
    clean up; the figures."""
    username = f"bench_quotes_{secrets.token_hex(4)}"
    user_id = create_user(url, Passwords(1, 8192), username, secrets.token_urlsafe(16), False)
    token = create_token(url, username)
    symbols = _instruments(instruments)
    with psycopg.connect(url, autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany("INSERT INTO instruments (symbol, name) VALUES (%s, %s)"
                        " ON CONFLICT (symbol) DO NOTHING", [(s, s) for s in symbols])
        cur.executemany("INSERT INTO quotes (instrument, bid, ask, last)"
                        " VALUES (%s, 99.99, 100.01, 100) ON CONFLICT (instrument) DO UPDATE"
                        " SET bid = 99.99, ask = 100.01, last = 100", [(s,) for s in symbols])
    # One user holds every session: lift the per-user socket limit for this server only.
    proc, port = _start_server(url, settings,
                               ORDERSTREAM_MAX_SOCKETS_PER_USER=str(sessions + 10))
    print(f"orderstream bench --quotes: server pid {proc.pid} on port {port}, "
          f"{os.cpu_count()} CPUs; clients, writer and server on this machine")
    try:
        return asyncio.run(_run(url, psutil.Process(proc.pid), port, token, symbols, sessions,
                                per_session, rate, seconds))
    finally:
        proc.terminate()
        proc.wait(15)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DELETE FROM users WHERE id = %s", (user_id,))


def run_quotes_bench(url: str, settings: config.Settings, sessions: int = 1000,
                     per_session: int = 10, instruments: int = 100, rate: float = 1000.0,
                     seconds: float = 5.0) -> int:
    """`bench --quotes`: the market-data report, printed."""
    measure_quotes(url, settings, sessions, per_session, instruments, rate, seconds)
    return 0
