"""A writer that keeps orders and quotes moving, through plain SQL like any other client."""

from __future__ import annotations

import logging
import random
import threading
import time
from decimal import Decimal

import psycopg

log = logging.getLogger(__name__)

INSTRUMENTS = {
    "ACME": Decimal("101.50"), "GLOBX": Decimal("47.20"), "INITECH": Decimal("12.85"),
    "UMBRL": Decimal("230.00"), "HOOLI": Decimal("88.10"), "STARK": Decimal("310.40"),
    "WAYNE": Decimal("156.75"), "WONKA": Decimal("9.95"),
}
STATUSES = ("new", "partially_filled", "filled", "cancelled")
MAX_ORDERS_PER_OWNER = 60


def _tick(price: Decimal, rng: random.Random) -> Decimal:
    step = price * Decimal(rng.randint(-40, 40)) / Decimal(10000)
    return max(Decimal("0.01"), (price + step).quantize(Decimal("0.01")))


class Simulator:
    """Makes `rate` changes per second (order updates, inserts, deletes, quote upserts)."""

    def __init__(self, url: str, rate: float, seed: int | None = None) -> None:
        self.url = url
        self.rate = rate
        self.rng = random.Random(seed)
        self.prices = dict(INSTRUMENTS)
        self.changes = 0
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        interval = 1.0 / self.rate if self.rate > 0 else 1.0
        with psycopg.connect(self.url, autocommit=True) as conn:
            next_at = time.monotonic()
            while not self._stop.is_set():
                self.step(conn)
                self.changes += 1
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                elif delay < -1:
                    next_at = time.monotonic()  # fell behind: don't burst to catch up

    def step(self, conn: psycopg.Connection) -> None:
        rng = self.rng
        instrument = rng.choice(list(self.prices))
        self.prices[instrument] = price = _tick(self.prices[instrument], rng)
        roll = rng.random()
        if roll < 0.25:
            spread = max(Decimal("0.01"), (price / 2000).quantize(Decimal("0.01")))
            conn.execute(
                "INSERT INTO quotes (instrument, bid, ask, last, updated_at)"
                " VALUES (%s, %s, %s, %s, now()) ON CONFLICT (instrument) DO UPDATE SET"
                " bid = EXCLUDED.bid, ask = EXCLUDED.ask, last = EXCLUDED.last,"
                " updated_at = now()",
                (instrument, price - spread, price + spread, price),
            )
            return
        owners = [row[0] for row in conn.execute("SELECT id FROM users ORDER BY id").fetchall()]
        if not owners:
            return
        owner = rng.choice(owners)
        count = conn.execute("SELECT count(*) FROM orders WHERE owner_id = %s", (owner,)).fetchone()
        assert count is not None
        if roll < 0.35 or count[0] == 0:
            conn.execute(
                "INSERT INTO orders (owner_id, instrument, side, quantity, price)"
                " VALUES (%s, %s, %s, %s, %s)",
                (owner, instrument, rng.choice(("buy", "sell")), rng.randint(1, 50) * 10, price),
            )
        elif roll < 0.40 and count[0] > MAX_ORDERS_PER_OWNER // 2:
            conn.execute(
                "DELETE FROM orders WHERE id = (SELECT id FROM orders WHERE owner_id = %s"
                " ORDER BY random() LIMIT 1)", (owner,))
        elif roll < 0.50:
            conn.execute(
                "UPDATE orders SET status = %s WHERE id = (SELECT id FROM orders"
                " WHERE owner_id = %s ORDER BY random() LIMIT 1)",
                (rng.choice(STATUSES), owner))
        else:
            conn.execute(
                "UPDATE orders SET price = %s WHERE id = (SELECT id FROM orders"
                " WHERE owner_id = %s AND status IN ('new', 'partially_filled')"
                " ORDER BY random() LIMIT 1)",
                (price, owner))


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
