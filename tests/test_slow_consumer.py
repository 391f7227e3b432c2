"""A client that stops reading: its queue is bounded in bytes (past it the session falls
behind and would read the change log as its socket drains: no resync), the server's memory
stays bounded, and other clients keep their pace."""

from __future__ import annotations

import asyncio
import json
import time

import psutil
import pytest
import websockets

from tests.conftest import ServerProcess, metrics
from tests.support.raw_ws import RawClient

pytestmark = pytest.mark.slow

ORDERS = 1000
ROUNDS = 50  # 50 x 1000 rows = 50,000 events
RSS_GROWTH_BOUND_MB = 100



def stuck_client(server: ServerProcess, token: str) -> RawClient:
    """A client that subscribes and then never reads."""
    client = RawClient(server, token)
    client.send_json({"op": "subscribe", "channel": "orders"})
    return client


async def flood(sql, owner_id: int) -> None:
    for _ in range(ROUNDS):
        await asyncio.to_thread(
            sql.execute, "UPDATE orders SET quantity = quantity + 1 WHERE owner_id = %s",
            (owner_id,))


async def drain(ws, count: int) -> None:
    got = 0
    while got < count:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
        assert frame["type"] != "resync", "a client that keeps up was told to resync"
        got += frame["type"] == "order"


async def timed_flood(server, user, sql) -> float:
    """Seconds for a reading client to receive the whole flood."""
    async with websockets.connect(server.ws_url, additional_headers=user.auth) as fast:
        await fast.send(json.dumps({"op": "subscribe", "channel": "orders"}))
        assert json.loads(await fast.recv())["type"] == "subscribed"
        started = time.perf_counter()
        await asyncio.gather(flood(sql, user.id), drain(fast, ORDERS * ROUNDS))
        return time.perf_counter() - started


async def test_non_reading_client_is_bounded_and_harmless(own_server, make_user, sql):
    user = make_user()
    sql.execute("INSERT INTO orders (owner_id, instrument, quantity, price)"
                " SELECT %s, 'SLOW' || g, 1, 1 FROM generate_series(1, %s) g", (user.id, ORDERS))
    server = psutil.Process(own_server.process.pid)

    alone = await timed_flood(own_server, user, sql)
    rss_before = server.memory_info().rss

    stuck = stuck_client(own_server, user.token)
    try:
        peak = rss_before
        task = asyncio.create_task(timed_flood(own_server, user, sql))
        while not task.done():
            peak = max(peak, server.memory_info().rss)
            await asyncio.sleep(0.05)
        with_stuck = task.result()
        counters = await metrics(own_server)
    finally:
        stuck.close()

    growth_mb = (peak - rss_before) / 2**20
    print(f"\nflood of {ORDERS * ROUNDS} events: {alone:.2f} s alone, {with_stuck:.2f} s beside "
          f"a stuck client; server RSS {rss_before / 2**20:.0f} MB, peak {peak / 2**20:.0f} MB; "
          f"{counters['orderstream_catch_ups_total']:.0f} catch-ups")
    assert growth_mb < RSS_GROWTH_BOUND_MB
    assert with_stuck < alone * 1.5 + 1.0  # the stuck client costs the others (almost) nothing
    # The stuck session fell behind (it reads the log once it drains), nobody got resync,
    # and it stayed open.
    assert counters["orderstream_catch_ups_total"] >= 1
    assert counters["orderstream_resyncs_sent_total"] == 0
    assert counters["orderstream_sessions"] >= 1
