"""A writer that keeps orders and quotes moving, through plain SQL like any other client."""

from __future__ import annotations

import contextlib
import logging
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

import psycopg

log = logging.getLogger(__name__)

# The demo's instruments: symbol -> (name, tick size, first price, a multiple of the tick).
INSTRUMENTS = {
    "ACME": ("Acme Corp", Decimal("0.01"), Decimal("101.50")),
    "GLOBX": ("Globex", Decimal("0.01"), Decimal("47.20")),
    "INITECH": ("Initech", Decimal("0.005"), Decimal("12.850")),
    "UMBRL": ("Umbrella", Decimal("0.05"), Decimal("230.00")),
    "HOOLI": ("Hooli", Decimal("0.01"), Decimal("88.10")),
    "STARK": ("Stark Industries", Decimal("0.10"), Decimal("310.40")),
    "WAYNE": ("Wayne Enterprises", Decimal("0.05"), Decimal("156.75")),
    "WONKA": ("Wonka", Decimal("0.001"), Decimal("9.950")),
}
STATUSES = ("new", "partially_filled", "filled", "cancelled")
MAX_ORDERS_PER_OWNER = 60
# A quote moves at most this many ticks at a time.
MAX_TICKS = 3


def ensure_instruments(conn: psycopg.Connection) -> None:
    """The demo instruments, unless they exist (their tick sizes are then left alone)."""
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO instruments (symbol, name, tick_size) VALUES (%s, %s, %s)"
            " ON CONFLICT (symbol) DO NOTHING",
            [(symbol, name, tick) for symbol, (name, tick, _) in INSTRUMENTS.items()])


def on_tick(price: Decimal, tick: Decimal) -> Decimal:
    """The nearest multiple of `tick`, at least one tick."""
    return max(tick, (price / tick).to_integral_value() * tick)


@dataclass
class Walk:
    """One instrument's random walk, in whole ticks."""

    tick: Decimal
    last: Decimal

    def step(self, rng: random.Random) -> tuple[Decimal, Decimal, Decimal]:
        """The next (bid, ask, last): last moves up to MAX_TICKS ticks, the spread is one or
        two ticks around it, all multiples of the tick."""
        self.last = on_tick(self.last + self.tick * rng.randint(-MAX_TICKS, MAX_TICKS), self.tick)
        below = rng.randint(0, 1)
        bid = max(Decimal(0), self.last - self.tick * below)
        return bid, bid + self.tick * rng.randint(1, 2), self.last


class Simulator:
    """Makes `rate` changes per second (order updates, inserts, deletes, quote upserts)."""

    def __init__(self, url: str, rate: float, seed: int | None = None) -> None:
        self.url = url
        self.rate = rate
        self.rng = random.Random(seed)
        self.walks: dict[str, Walk] = {}
        self.changes = 0
        self.quotes = 0
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def load(self, conn: psycopg.Connection) -> None:
        """Walk every instrument from its last price (creating the demo ones if none exist)."""
        if conn.execute("SELECT NOT EXISTS (SELECT FROM instruments)").fetchone() == (True,):
            ensure_instruments(conn)
        rows = conn.execute(
            "SELECT i.symbol, i.tick_size, q.last FROM instruments i"
            " LEFT JOIN quotes q ON q.instrument = i.symbol ORDER BY i.symbol").fetchall()
        for symbol, tick, last in rows:
            if last is None:
                last = INSTRUMENTS[symbol][2] if symbol in INSTRUMENTS else tick * 1000
            self.walks[symbol] = Walk(tick, on_tick(last, tick))

    def run(self, progress: Callable[[Simulator, float], None] | None = None,
            every: float = 5.0) -> None:
        """Until stop(): `progress(self, seconds)` is called every `every` seconds."""
        interval = 1.0 / self.rate if self.rate > 0 else 1.0
        with psycopg.connect(self.url, autocommit=True) as conn:
            self.load(conn)
            started = next_at = time.monotonic()
            report_at = started + every
            while not self._stop.is_set():
                if self.step(conn):
                    self.changes += 1
                now = time.monotonic()
                if progress is not None and now >= report_at:
                    progress(self, now - started)
                    report_at += every
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                elif delay < -1:
                    next_at = time.monotonic()  # fell behind: don't burst to catch up

    def step(self, conn: psycopg.Connection) -> bool:
        """One change (a quote, or an order insert, update or delete); False if none could
        be made (no instruments, no users, no matching order)."""
        rng = self.rng
        if not self.walks:
            return False
        instrument = rng.choice(list(self.walks))
        walk = self.walks[instrument]
        price = walk.last
        roll = rng.random()
        if roll < 0.25:
            bid, ask, price = walk.step(rng)
            conn.execute(
                "INSERT INTO quotes (instrument, bid, ask, last, updated_at)"
                " VALUES (%s, %s, %s, %s, now()) ON CONFLICT (instrument) DO UPDATE SET"
                " bid = EXCLUDED.bid, ask = EXCLUDED.ask, last = EXCLUDED.last,"
                " updated_at = now()",
                (instrument, bid, ask, price),
            )
            self.quotes += 1
            return True
        owners = [row[0] for row in conn.execute("SELECT id FROM users ORDER BY id").fetchall()]
        if not owners:
            return False
        owner = rng.choice(owners)
        count = conn.execute("SELECT count(*) FROM orders WHERE owner_id = %s", (owner,)).fetchone()
        assert count is not None
        if roll < 0.35 or count[0] == 0:
            cur = conn.execute(
                "INSERT INTO orders (owner_id, instrument, side, quantity, price)"
                " VALUES (%s, %s, %s, %s, %s)",
                (owner, instrument, rng.choice(("buy", "sell")), rng.randint(1, 50) * 10, price),
            )
        elif roll < 0.40 and count[0] > MAX_ORDERS_PER_OWNER // 2:
            cur = conn.execute(
                "DELETE FROM orders WHERE id = (SELECT id FROM orders WHERE owner_id = %s"
                " ORDER BY random() LIMIT 1)", (owner,))
        elif roll < 0.50:
            cur = conn.execute(
                "UPDATE orders SET status = %s WHERE id = (SELECT id FROM orders"
                " WHERE owner_id = %s ORDER BY random() LIMIT 1)",
                (rng.choice(STATUSES), owner))
        else:
            cur = conn.execute(
                "UPDATE orders SET price = %s WHERE id = (SELECT id FROM orders"
                " WHERE owner_id = %s AND status IN ('new', 'partially_filled')"
                " ORDER BY random() LIMIT 1)",
                (price, owner))
        return cur.rowcount > 0


def start_in_thread(url: str, rate: float) -> Simulator:
    simulator = Simulator(url, rate)
    thread = threading.Thread(target=_run_logged, args=(simulator,), name="simulator", daemon=True)
    thread.start()
    return simulator


def _run_logged(simulator: Simulator) -> None:
    try:
        simulator.run()
    except psycopg.Error as exc:
        if not simulator._stop.is_set():
            log.warning("simulator stopped: %s", exc)


def progress_line(simulator: Simulator, seconds: float) -> str:
    """What `simulate` prints as it goes: the rate achieved and the events written."""
    rate = simulator.changes / seconds if seconds > 0 else 0.0
    orders = simulator.changes - simulator.quotes
    return (f"simulate: {rate:.1f} changes/s achieved (target {simulator.rate:g});"
            f" {simulator.changes} events written ({simulator.quotes} quotes, {orders} orders)"
            f" in {seconds:.1f} s")


def run_cli(url: str, rate: float, every: float = 5.0) -> int:
    """`python server.py simulate`: write until Ctrl-C, a progress line every `every` s."""
    simulator = Simulator(url, rate)
    print(f"writing {rate:g} changes/s; Ctrl-C to stop", file=sys.stderr, flush=True)
    started = time.monotonic()
    with contextlib.suppress(KeyboardInterrupt):
        simulator.run(lambda sim, seconds: print(progress_line(sim, seconds), file=sys.stderr,
                                                 flush=True), every)
    print(progress_line(simulator, time.monotonic() - started), file=sys.stderr, flush=True)
    return 0
