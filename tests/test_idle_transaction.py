"""An idle `BEGIN; UPDATE ...` left open in psql, with other database work going on: cursors
stay small and exact, and a resume delivers what was missed (at most 2 repeats), however
much that is."""

from __future__ import annotations

import json

import psycopg
import pytest

from tests.conftest import insert_order, open_socket

pytestmark = pytest.mark.slow


def write_with_other_work(sql, order_id: int, changes: int) -> None:
    """`changes` single-row updates, each its own transaction, with transactions that take
    xids but write no orders in between (as other applications on the database do)."""
    for _ in range(changes):
        sql.execute("SELECT pg_current_xact_id()")
        sql.execute("UPDATE orders SET price = price + 1 WHERE id = %s", (order_id,))
        sql.execute("SELECT pg_current_xact_id()")


async def resume_and_count(server, user, cursor: str, want: int) -> tuple[list[int], int]:
    """Resume from `cursor`; the versions delivered until the last wanted one, and the
    resync frames."""
    versions: list[int] = []
    resyncs = 0
    async with open_socket(server, user) as ws:
        await ws.send({"op": "subscribe", "channel": "orders", "after": cursor})
        assert (await ws.recv())["type"] == "subscribed"
        while not versions or versions[-1] < want:
            frame = await ws.recv(timeout=10)
            if frame["type"] == "resync":
                resyncs += 1
                break
            versions.append(frame["order"]["version"])
        await ws.assert_silent()
    return versions, resyncs


@pytest.mark.parametrize("missed", [1, 150, 3000])
async def test_resume_with_an_idle_transaction_open(server, make_user, sql, db_url, missed):
    alice, bob = make_user(), make_user()
    idle_on = insert_order(sql, bob.id, "IDLE")
    order_id = insert_order(sql, alice.id, "ACME")
    with psycopg.connect(db_url) as idle:  # not autocommit: psql's BEGIN
        idle.execute("UPDATE orders SET price = 1 WHERE id = %s", (idle_on,))
        write_with_other_work(sql, order_id, 200)  # the idle transaction holds xmin back
        async with open_socket(server, alice) as ws:
            await ws.subscribe_orders()
            write_with_other_work(sql, order_id, 1)
            event = await ws.recv_type("order")
            cursor = event["cursor"]
            seen = event["order"]["version"]
        assert len(cursor) < 64, cursor  # not a list of every transaction since BEGIN
        write_with_other_work(sql, order_id, missed)
        versions, resyncs = await resume_and_count(server, alice, cursor, seen + missed)
        idle.rollback()
    assert resyncs == 0
    assert set(versions) == set(range(seen + 1, seen + missed + 1))  # every missed change
    assert len(versions) - missed <= 2, f"{len(versions) - missed} repeats"
    print(f"\nidle transaction open, {missed} missed: {len(versions)} delivered, "
          f"cursor {json.dumps(cursor)}")
