"""Demo data: a few users (passwords printed) and orders to look at."""

from __future__ import annotations

import random
from decimal import Decimal

import psycopg

from cli.simulate import INSTRUMENTS, ensure_instruments, on_tick
from cli.users import create_user
from web.passwords import Passwords

DEMO_USERS = (("alice", False), ("bob", False), ("carol", False), ("admin", True))


def load_demo(url: str, passwords: Passwords, orders_per_user: int = 25) -> list[tuple[str, str]]:
    """Create (or reset) the demo users, the demo instruments, and give each user a few
    orders; returns (user, password)."""
    credentials = []
    rng = random.Random(7)
    with psycopg.connect(url) as conn:
        ensure_instruments(conn)
        for username, is_staff in DEMO_USERS:
            password = f"{username}-demo"
            user_id = create_user(url, passwords, username, password, is_staff, update=True)
            credentials.append((username, password))
            have = conn.execute("SELECT count(*) FROM orders WHERE owner_id = %s",
                                (user_id,)).fetchone()
            assert have is not None
            rows = []
            for _ in range(max(0, orders_per_user - have[0])):
                instrument, (_, tick, price) = rng.choice(list(INSTRUMENTS.items()))
                price = on_tick(price * Decimal(rng.randint(95, 105)) / 100, tick)
                rows.append((user_id, instrument, rng.choice(("buy", "sell")),
                             rng.randint(1, 50) * 10, price))
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO orders (owner_id, instrument, side, quantity, price)"
                    " VALUES (%s, %s, %s, %s, %s)", rows)
        conn.commit()
    return credentials
