"""`bench` scenarios floor and latency: single-event latency for PostgreSQL alone (a bare
NOTIFY heard by an asyncpg LISTEN connection: the floor no design on NOTIFY can beat), for
orderstream and for the naive build, interleaved update by update in one run so that all
three see the same machine.

Two clocks per event: from the writer's commit returned to the event received (issue 8's
latency), and from the statement sent to the event received. PostgreSQL signals listeners as
it answers the commit, so on the first clock the floor is about 0 and a build's figure is
its own cost; the second clock includes the commit's round trip, so ratios to the floor mean
something there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import psycopg
import websockets

from cli.bench_fanout import Build
from web.frames import event_ts

FLOOR = "floor"  # the name of the floor's samples beside the builds' names
CLOCKS = ("commit_ms", "sent_ms")  # commit returned -> received, statement sent -> received
CHANNEL = "orderstream_bench_floor"  # a scratch channel: nothing else listens or notifies
WARM_UP = 20  # updates per build before the timed ones: connections, plans, caches


class NotifyFloor:
    """An asyncpg connection LISTENing on a scratch channel. `once()` times one
    `pg_notify` from the writer's commit returned to the listener's callback."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.heard_early = 0  # callbacks that ran before the writer saw its commit return
        self._waiter: asyncio.Future[float] | None = None

    def _heard(self, _conn: object, _pid: int, _channel: str, _payload: str) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(time.perf_counter())

    async def once(self, db: psycopg.AsyncConnection, payload: str) -> tuple[float, float]:
        """Milliseconds from the NOTIFY's commit returned, and from the statement sent, to
        the callback."""
        self._waiter = asyncio.get_running_loop().create_future()
        sent = time.perf_counter()
        await db.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
        committed = time.perf_counter()
        heard = await asyncio.wait_for(self._waiter, 10)
        # PostgreSQL signals listeners before it answers the writer, so the callback can run
        # first in this event loop: that counts as 0, the way a frame already read by the
        # socket's reader is taken at once by recv() below.
        if heard < committed:
            self.heard_early += 1
        return max(heard - committed, 0.0) * 1000, (heard - sent) * 1000


@contextlib.asynccontextmanager
async def notify_floor(url: str) -> AsyncIterator[NotifyFloor]:
    conn = await asyncpg.connect(url)
    floor = NotifyFloor(conn)
    try:
        await conn.add_listener(CHANNEL, floor._heard)
        yield floor
    finally:
        await conn.close()


async def _open(build: Build) -> websockets.ClientConnection:
    target = build.targets[0]
    ws = await websockets.connect(target.url, additional_headers=target.headers,
                                  max_size=2**24, compression=None)
    if target.subscribe:
        await ws.send(json.dumps({"op": "subscribe", "channel": "orders"}))
        if '"subscribed"' not in await asyncio.wait_for(ws.recv(), 10):
            raise RuntimeError(f"{build.name}: no subscribed frame")
    return ws


async def _build_once(db: psycopg.AsyncConnection, build: Build,
                      ws: websockets.ClientConnection) -> tuple[float, float]:
    """Milliseconds from one single-row UPDATE's commit returned, and from the statement
    sent, to its frame received."""
    row = build.rows[build.targets[0].owner][0]
    sent = time.perf_counter()
    await db.execute(f"UPDATE {build.table} SET quantity = quantity %% 9 + 1"  # noqa: S608
                     " WHERE id = %s", (row,))
    committed = time.perf_counter()
    while event_ts(await asyncio.wait_for(ws.recv(), 10)) is None:  # type: ignore[arg-type]
        pass
    received = time.perf_counter()
    return (received - committed) * 1000, (received - sent) * 1000


async def _interleaved(url: str, builds: Sequence[Build], updates: int,
                       with_floor: bool) -> dict[str, Any]:
    names = [FLOOR] * with_floor + [build.name for build in builds]
    samples: dict[str, dict[str, list[float]]] = {clock: {name: [] for name in names}
                                                  for clock in CLOCKS}
    async with contextlib.AsyncExitStack() as stack, \
            await psycopg.AsyncConnection.connect(url, autocommit=True) as db:
        floor = await stack.enter_async_context(notify_floor(url)) if with_floor else None
        sockets = []
        for build in builds:
            ws = await _open(build)
            stack.push_async_callback(ws.close)
            sockets.append((build, ws))
        for i in range(WARM_UP + updates):
            timed = {}
            if floor is not None:
                timed[FLOOR] = await floor.once(db, str(i))
            # The builds take turns going first: neither always follows the floor's NOTIFY
            # or the other build's frame (what the one going second inherits: a database
            # and a machine still busy with the first).
            for build, ws in sockets if i % 2 == 0 else sockets[::-1]:
                timed[build.name] = await _build_once(db, build, ws)
            if i >= WARM_UP:
                for name, values in timed.items():
                    for clock, value in zip(CLOCKS, values, strict=True):
                        samples[clock][name].append(value)
        early = floor.heard_early if floor is not None else 0
    return {"samples_ms": samples, "floor_heard_before_commit_returned": early}


def interleaved_latency(url: str, builds: Sequence[Build], updates: int,
                        with_floor: bool = True) -> dict[str, Any]:
    """Per update: the floor's NOTIFY (if `with_floor`), then one single-row UPDATE per
    build (their order alternating), each timed from commit returned to received; `updates`
    of each after a warm-up. Returns {"samples_ms": {clock: {name: [ms, ...]}},
    "floor_heard_before_commit_returned": n}, clock one of CLOCKS, name FLOOR or a build's."""
    return asyncio.run(_interleaved(url, builds, updates, with_floor))
