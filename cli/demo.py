"""Demo data: a few users (passwords printed) and orders to look at."""

from __future__ import annotations

import random
from decimal import Decimal

import psycopg

from cli.simulate import INSTRUMENTS, ensure_instruments, on_tick
from cli.users import add_user
from web.passwords import Passwords

DEMO_USERS = (("alice", False), ("bob", False), ("carol", False), ("admin", True))


def load_demo(url: str, passwords: Passwords,
              orders_per_user: int = 25) -> list[tuple[str, str | None]]:
    """Create the demo instruments, and the demo users that do not exist yet, each with a few
    orders; returns (user, password), the password None for a user that existed.

    An existing account is left as it is (password, staff flag, orders): on a shared
    database a demo name may be a real person's, and the demo passwords are published."""
    credentials: list[tuple[str, str | None]] = []
    rng = random.Random(7)
    with psycopg.connect(url) as conn:
        ensure_instruments(conn)
        for username, is_staff in DEMO_USERS:
            password = f"{username}-demo"
            user_id = add_user(conn, passwords, username, password, is_staff)
            credentials.append((username, None if user_id is None else password))
            if user_id is None:
                continue
            rows = []
            for _ in range(orders_per_user):
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
