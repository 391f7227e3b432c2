"""python server.py bench --quotes: market data to many sessions, conflated.

1,000 sessions (default), each subscribed to 10 of 100 instruments, while a writer upserts
quotes through plain SQL at a fixed rate. Reported: quotes written per second, quote frames
delivered per second (all sessions together), how many frames conflation saved, and the age
of each delivered quote (trigger time to the client's receive) at p50/p99/max, and the
server's CPU per quote frame.

The clients are the bench's lean ones (cli/bench_client.py: a Protocol per socket, frames
parsed from raw bytes), in one process. With one process of
websockets clients (a task and a JSON decode per frame), the clients were the slowest part:
the same server measured quote ages of 5-560 ms at p50, by how busy that process was.
"""

from __future__ import annotations

import asyncio
import functools
import json
import multiprocessing
import os
import random
import secrets
import time
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from typing import Any, cast

import psutil
import psycopg

import config
from cli.bench import _pct, _start_server
from cli.bench_client import Session, open_sessions, run_client
from cli.bench_fanout import Target, spawn_clients
from cli.process_cpu import cpu_seconds
from cli.users import create_token, create_user
from web.passwords import Passwords

PREFIX = "BQ"
CLIENT_PROCESSES = 1
QUOTE_FRAME = '{"type" : "quote"'  # how the trigger's json_build_object starts one


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


class _QuoteSession(Session):
    """One session of a client process: subscribed to its instruments, opened once their
    snapshot arrived, then keeping each quote's age while `recording`."""

    def __init__(self, target: Target, ages: list[float], instruments: list[str]) -> None:
        super().__init__(target, ages, json.dumps(
            {"op": "subscribe", "channel": "quotes", "instruments": instruments}).encode())
        self.snapshot = len(instruments)
        self.recording = False

    def _text(self, text: str, received: float) -> None:
        if not text.startswith(QUOTE_FRAME):
            return
        if not self.opened.done():
            self.snapshot -= 1
            if self.snapshot == 0:
                self.opened.set_result(None)
        elif self.recording:
            self.events += 1
            at = text.rfind('"ts"')  # the last field: json_build_object's order
            self.latencies.append(received - float(text[at + 4:text.rfind("}")].lstrip(" :")))


async def _client(pipe: Connection, choices: list[list[str]], target: Target) -> None:
    ages: list[float] = []
    opened, failed = await open_sessions(
        [(target, functools.partial(_QuoteSession, target, ages, chosen)) for chosen in choices])
    sessions = cast(list[_QuoteSession], opened)
    pipe.send(("ready", len(failed), repr(failed[0]) if failed else ""))
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, pipe.recv)  # go
    for session in sessions:
        session.recording = True
    await loop.run_in_executor(None, pipe.recv)  # stop
    for session in sessions:
        session.recording = False
    pipe.send((sum(s.events for s in sessions), ages))
    for session in sessions:
        session.close()


def _client_main(pipe: Connection, choices: list[list[str]], target: Target) -> None:
    run_client(_client(pipe, choices, target))


def _run(url: str, server: psutil.Process, port: int, token: str, symbols: list[str],
         sessions: int, per_session: int, rate: float, seconds: float) -> dict[str, Any]:
    rng = random.Random(2)
    choices = [rng.sample(symbols, per_session) for _ in range(sessions)]
    target = Target(f"ws://127.0.0.1:{port}/ws", {"Authorization": f"Bearer {token}"}, True, 0)
    spawn = multiprocessing.get_context("spawn")
    opened = time.monotonic()
    clients = spawn_clients(functools.partial(_client_main, target=target), choices,
                            CLIENT_PROCESSES)
    try:
        failures = [pipe.recv() for _, pipe in clients]
        if any(count for _, count, _ in failures):
            raise RuntimeError(f"{sum(c for _, c, _ in failures)} quote sessions failed to"
                               f" open, for example {next(e for _, _, e in failures if e)}")
        subscribed_in = time.monotonic() - opened
        print(f"  {sessions} sessions x {per_session} of {len(symbols)} instruments subscribed"
              f" in {subscribed_in:.1f} s, from {CLIENT_PROCESSES} client processes")
        written = spawn.Value("q", 0)
        writer = spawn.Process(target=_write, args=(url, symbols, rate, seconds, written),
                               name="bench-quotes-writer")
        for _, pipe in clients:
            pipe.send("go")
        started = time.monotonic()
        cpu_before = cpu_seconds(server)
        writer.start()
        writer.join()
        wrote_for = time.monotonic() - started
        # Let the last quotes arrive (conflated: the newest of each instrument), then stop.
        time.sleep(1.0)
        elapsed = time.monotonic() - started
        cpu = cpu_seconds(server) - cpu_before
        delivered, ages = 0, []
        for _, pipe in clients:
            pipe.send("stop")
        for _, pipe in clients:
            count, values = pipe.recv()
            delivered += count
            ages.extend(values)
    finally:
        for process, _ in clients:
            process.join(10)
            if process.is_alive():
                process.kill()
    # Each quote is of interest to this many sessions on average (sessions x 10 / 100).
    interested = sessions * per_session / len(symbols)
    quotes = written.value
    unconflated = quotes * interested
    print(f"  writer: {quotes} quotes in {wrote_for:.1f} s ({quotes / wrote_for:,.0f}/s,"
          f" target {rate:,.0f}/s), each wanted by {interested:.0f} sessions on average")
    print(f"  delivered: {delivered:,} quote frames ({delivered / elapsed:,.0f}/s over"
          f" {elapsed:.1f} s), {delivered / max(unconflated, 1):.0%} of the {unconflated:,.0f}"
          f" an unconflated feed would send")
    print(f"  server CPU: {cpu / max(delivered, 1) * 1e6:.1f} us per quote frame delivered")
    if ages:
        print(f"  quote age at the client (trigger -> received): p50 {_pct(ages, 0.5):.1f} ms"
              f"   p99 {_pct(ages, 0.99):.1f} ms   max {max(ages):.1f} ms")
    return {"sessions": sessions, "instruments_per_session": per_session,
            "instruments": len(symbols), "subscribed_in_s": subscribed_in,
            "target_rate": rate, "quotes_written": quotes, "written_per_s": quotes / wrote_for,
            "wanted_by_sessions": interested, "frames_delivered": delivered,
            "frames_per_s": delivered / elapsed,
            "sent_of_unconflated": delivered / max(unconflated, 1),
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
        return _run(url, psutil.Process(proc.pid), port, token, symbols, sessions, per_session,
                    rate, seconds)
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
