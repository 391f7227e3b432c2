"""Fan-out to many sockets of one owner. A live event reaches a socket straight from the
publish when its sender waits on an empty queue, else through its queue (a paused socket,
a `batch` subscription, a catch-up from the log): either way every socket gets every event
once, in commit order, a socket that stops reading changes nothing for the others, every
frame is counted once, and the bytes on the wire are the frames websockets would send."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import pytest
from websockets.frames import Frame, Opcode

from tests.conftest import ServerProcess, Socket, metrics, open_socket, running_server
from tests.support.raw_ws import RawClient

pytestmark = pytest.mark.slow

FAST_SOCKETS = 12
ROWS = 500
ROUNDS = 3  # each: single-row UPDATEs, then one UPDATE of every row
SINGLES = 20
# Bytes of note per row in the big UPDATEs: 3 x 500 frames of ~8 KB, 12 MB for the socket
# that does not read, past its queue (BUDGET), its transport's buffer and the kernel's.
NOTE = 8000
BUDGET = 64 * 1024
AFTER = 20  # single-row UPDATEs once the stuck socket reads again


def write(sql, owner_id: int, ids: list[int], rounds: int, singles: int) -> None:
    for round_ in range(rounds):
        for i in range(singles):
            sql.execute("UPDATE orders SET price = price + 1 WHERE id = %s",
                        (ids[(round_ * singles + i) % len(ids)],))
        sql.execute("UPDATE orders SET note = repeat(%s, %s) WHERE owner_id = %s",
                    (chr(ord("a") + round_), NOTE, owner_id))


def changes_of(sql, owner_id: int, after_seq: int) -> list[int]:
    """The seqs of the owner's changes after `after_seq`, in commit order (one writer here:
    xid order is commit order)."""
    return [r[0] for r in sql.execute(
        "SELECT seq FROM order_changes WHERE owner_id = %s AND seq > %s ORDER BY xid, seq",
        (owner_id, after_seq)).fetchall()]


async def order_texts(ws: Socket, count: int) -> list[str]:
    """The next `count` frames, each an order event (a resync would fail here)."""
    texts = []
    for _ in range(count):
        text = await asyncio.wait_for(ws.conn.recv(), 30)
        assert '"type" : "order"' in text[:20], text[:200]
        texts.append(text)  # type: ignore[arg-type]
    return texts


async def batched_events(ws: Socket, count: int) -> tuple[list[dict], int]:
    """The next `count` order events of a batch subscription, and the frames they came in."""
    events: list[dict] = []
    frames = 0
    while len(events) < count:
        frame = await ws.recv(30)
        frames += 1
        events.extend(frame["events"] if frame["type"] == "batch" else [frame])
    return events, frames


def raw_order_texts(client: RawClient, count: int) -> list[str]:
    texts = [client.recv_text() for _ in range(count)]
    for text in texts:
        assert json.loads(text)["type"] == "order", text[:200]
    return texts


async def frames_sent(server: ServerProcess, want: float, timeout: float = 8.0) -> float:
    """The server's frames_sent counter once it reaches `want` (synced every second)."""
    deadline = time.monotonic() + timeout
    value = -1.0
    while time.monotonic() < deadline:
        value = (await metrics(server))["orderstream_frames_sent_total"]
        if value == want:
            break
        await asyncio.sleep(0.2)
    return value


async def test_every_socket_of_an_owner_gets_every_event_once_in_order_beside_a_stuck_one(
        db_url, tmp_path, make_user, sql):
    alice = make_user()
    ids = [r[0] for r in sql.execute(
        "INSERT INTO orders (owner_id, instrument, quantity, price)"
        " SELECT %s, 'FAN' || g, 1, 100 FROM generate_series(1, %s) g RETURNING id",
        (alice.id, ROWS)).fetchall()]
    # Started after the insert: its listener's position is past those events.
    with running_server(db_url, tmp_path, ORDERSTREAM_SESSION_QUEUE_BYTES=str(BUDGET)) as server:
        stuck = RawClient(server, alice.token)
        try:
            stuck.send_json({"op": "subscribe", "channel": "orders"})
            assert json.loads(await asyncio.to_thread(stuck.recv_text))["type"] == "subscribed"
            stuck.wire = []
            async with contextlib.AsyncExitStack() as stack:
                fast = [await stack.enter_async_context(open_socket(server, alice))
                        for _ in range(FAST_SOCKETS)]
                batched = await stack.enter_async_context(open_socket(server, alice))
                for ws in fast:
                    await ws.subscribe_orders()
                await batched.subscribe_orders(batch=True)
                start = sql.execute("SELECT coalesce(max(seq), 0) FROM order_changes").fetchone()
                count = ROUNDS * (SINGLES + ROWS)
                writer = asyncio.create_task(
                    asyncio.to_thread(write, sql, alice.id, ids, ROUNDS, SINGLES))
                got = await asyncio.gather(*(order_texts(ws, count) for ws in fast))
                events, batch_frames = await batched_events(batched, count)
                await writer
                expected = changes_of(sql, alice.id, start[0])
                assert len(expected) == count
                for texts in got:
                    assert [json.loads(t)["seq"] for t in texts] == expected
                    assert texts == got[0]  # the same frames, byte for byte
                assert events == [json.loads(t) for t in got[0]]
                fell_behind = await metrics(server)

                # Now the stuck socket reads: everything, once, in order (what did not fit
                # its queue, from the log), no resync; then it is live again like the rest.
                late = await asyncio.to_thread(raw_order_texts, stuck, count)
                assert [json.loads(t)["seq"] for t in late] == expected
                write_after = asyncio.create_task(
                    asyncio.to_thread(write, sql, alice.id, ids, 1, AFTER))
                more = AFTER + ROWS
                late_live, (events_after, batch_frames_after), *after = await asyncio.gather(
                    asyncio.to_thread(raw_order_texts, stuck, more),
                    batched_events(batched, more),
                    *(order_texts(ws, more) for ws in fast))
                await write_after
                expected_after = changes_of(sql, alice.id, expected[-1])
                assert [json.loads(t)["seq"] for t in late_live] == expected_after
                assert all(texts == after[0] for texts in after)
                assert [json.loads(t)["seq"] for t in after[0]] == expected_after
                assert events_after == [json.loads(t) for t in after[0]]

                # Every frame written was counted once: on each socket its `subscribed`, and
                # the events (a batch frame counts one).
                sent = ((FAST_SOCKETS + 1) * (1 + count + more)
                        + 1 + batch_frames + batch_frames_after)
                assert await frames_sent(server, sent) == sent
        finally:
            stuck.close()
    assert fell_behind["orderstream_catch_ups_total"] >= 1
    assert fell_behind["orderstream_resyncs_sent_total"] == 0
    # The wire: each frame as websockets frames it (FIN, text, the shortest length), with
    # no offset, no extra bytes between frames.
    assert len(stuck.wire) == count + AFTER + ROWS
    for raw in stuck.wire:
        head = 2 + {126: 2, 127: 8}.get(raw[1] & 0x7F, 0)
        assert raw == Frame(Opcode.TEXT, raw[head:]).serialize(mask=False, extensions=[])
