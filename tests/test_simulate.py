"""`python server.py simulate`: quotes walk in whole ticks, and a progress line tells the rate
achieved and the events written."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
from decimal import Decimal

import psycopg

from cli.simulate import MAX_TICKS, Walk
from tests.conftest import ROOT
from tests.support.database import new_user, own_database

PROGRESS = re.compile(r"^simulate: (?P<rate>[\d.]+) changes/s achieved \(target 300\);"
                      r" (?P<events>\d+) events written \((?P<quotes>\d+) quotes,"
                      r" (?P<orders>\d+) orders\) in [\d.]+ s$")


def test_a_walk_moves_in_whole_ticks_and_never_crosses():
    rng = random.Random(1)
    for tick in (Decimal("0.01"), Decimal("0.05"), Decimal("0.001"), Decimal("0.25")):
        walk = Walk(tick, tick * 3)
        before = walk.last
        for _ in range(2000):
            bid, ask, last = walk.step(rng)
            assert bid <= ask and bid >= 0 and last >= tick
            for price in (bid, ask, last):
                assert price % tick == 0, (price, tick)
            assert abs(last - before) <= MAX_TICKS * tick
            before = last


def test_simulate_prints_progress_and_keeps_quotes_on_ticks(server_url):
    with own_database(server_url, "simulate") as url:
        new_user(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("INSERT INTO instruments (symbol, name, tick_size) VALUES"
                         " ('TICKA', 'A', 0.05), ('TICKB', 'B', 0.001)")
            conn.execute("INSERT INTO quotes (instrument, bid, ask, last)"
                         " VALUES ('TICKA', 99.95, 100.05, 100.00)")
        env = {**os.environ, "DATABASE_URL": url, "ORDERSTREAM_LOG_LEVEL": "warning"}
        process = subprocess.Popen(
            [sys.executable, "server.py", "simulate", "--rate", "300", "--progress", "0.5"],
            cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
        try:
            assert process.stderr is not None
            lines = []
            while not any(PROGRESS.match(line) for line in lines):
                line = process.stderr.readline()
                assert line, f"simulate ended: {''.join(lines)}"
                lines.append(line.rstrip("\n"))
            process.send_signal(signal.SIGINT)
            _, rest = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        assert process.returncode == 0, rest
        final = PROGRESS.match(rest.strip().splitlines()[-1])
        assert final is not None, rest
        assert float(final["rate"]) > 0
        assert int(final["events"]) == int(final["quotes"]) + int(final["orders"]) > 0
        with psycopg.connect(url) as conn:
            off_tick = conn.execute(
                "SELECT q.* FROM quotes q JOIN instruments i ON i.symbol = q.instrument"
                " WHERE q.bid % i.tick_size <> 0 OR q.ask % i.tick_size <> 0"
                " OR q.last % i.tick_size <> 0").fetchall()
            assert off_tick == []
            (quoted,) = conn.execute("SELECT count(*) FROM quotes").fetchone()
            assert quoted == 2 or int(final["quotes"]) < 10
            (orders,) = conn.execute("SELECT count(*) FROM orders").fetchone()
            assert orders > 0


def test_demo_creates_the_instruments(server_url):
    with own_database(server_url, "demo") as url:
        env = {**os.environ, "DATABASE_URL": url, "ORDERSTREAM_ARGON2_TIME_COST": "1",
               "ORDERSTREAM_ARGON2_MEMORY_COST_KIB": "8192", "ORDERSTREAM_LOG_LEVEL": "warning"}
        result = subprocess.run([sys.executable, "server.py", "demo"], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        with psycopg.connect(url) as conn:
            rows = conn.execute("SELECT symbol, tick_size FROM instruments").fetchall()
            off_tick = conn.execute(
                "SELECT count(*) FROM orders o JOIN instruments i ON i.symbol = o.instrument"
                " WHERE o.price % i.tick_size <> 0").fetchone()
        assert len(rows) >= 5 and all(tick > 0 for _, tick in rows)
        assert off_tick == (0,)  # demo orders are priced in ticks
