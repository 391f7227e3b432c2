"""Scale-out (issue 8): under `serve --workers 2`, and with two separate `serve` processes on
one database, every session still gets each event exactly once, in the same order as every
other session of its owner whichever process holds it, and a cursor taken on one process
resumes on the other."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import ServerProcess, Socket, User, insert_order, open_socket

SOCKETS_PER_OWNER = 6
SINGLE_WRITES = 60
BULK_ROWS = 150  # over the triggers' 100-row line: one "bulk" notification, read from the log


@contextlib.contextmanager
def _nodes(kind: str, db_url: str, tmp_path: Path) -> Iterator[list[ServerProcess]]:
    """Two ways in: the same port served by two workers, or two processes on two ports."""
    if kind == "workers":
        servers = [ServerProcess(db_url, tmp_path, workers=2)]
    else:
        servers = [ServerProcess(db_url, tmp_path / "a"), ServerProcess(db_url, tmp_path / "b")]
    for server in servers:
        server.data_dir.mkdir(parents=True, exist_ok=True)
        server.start()
    try:
        yield servers * (2 // len(servers))
    finally:
        for server in servers:
            server.stop()


def _write_concurrently(db_url: str, owners: list[User]) -> None:
    """Three writers at once: single-row writes alternating owners, one bulk UPDATE, and
    transactions of several statements touching both owners."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        ids = {owner.id: [insert_order(conn, owner.id, "SCALE") for _ in range(3)]
               for owner in owners}
        conn.execute("INSERT INTO orders (owner_id, instrument, quantity, price)"
                     " SELECT %s, 'SCALEBULK', 1, g FROM generate_series(1, %s) g",
                     (owners[0].id, BULK_ROWS))

    def singles() -> None:
        with psycopg.connect(db_url, autocommit=True) as conn:
            for i in range(SINGLE_WRITES):
                owner = owners[i % 2]
                conn.execute("UPDATE orders SET price = %s WHERE id = %s",
                             (100 + i, ids[owner.id][i % 3]))

    def bulk() -> None:
        with psycopg.connect(db_url, autocommit=True) as conn:
            for _ in range(2):
                conn.execute("UPDATE orders SET quantity = quantity + 1"
                             " WHERE owner_id = %s AND instrument = 'SCALEBULK'", (owners[0].id,))

    def transactions() -> None:
        with psycopg.connect(db_url) as conn:
            for i in range(10):
                with conn.transaction():
                    for owner in owners:
                        conn.execute("UPDATE orders SET note = %s WHERE id = %s",
                                     (f"t{i}", ids[owner.id][2]))
                    insert_order(conn, owners[i % 2].id, "SCALETX")

    threads = [threading.Thread(target=job) for job in (singles, bulk, transactions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)


def _expected(conn: psycopg.Connection, after_seq: int, owner_ids: list[int]) -> dict[Any, set]:
    """The change log's seqs after `after_seq`, per owner and for all of them."""
    rows = conn.execute("SELECT seq, owner_id FROM order_changes WHERE seq > %s"
                        " AND owner_id = ANY(%s)", (after_seq, owner_ids)).fetchall()
    expected: dict[Any, set] = {owner_id: set() for owner_id in owner_ids}
    for seq, owner_id in rows:
        expected[owner_id].add(seq)
    expected["*"] = {seq for seq, _ in rows}
    return expected


async def _collect(ws: Socket, want: set[int], owner_ids: set[int],
                   staff: bool) -> list[dict[str, Any]]:
    """Order frames of `owner_ids` until every seq in `want` has arrived (or 20 s pass);
    duplicates and strays are kept so the assertions can see them. An owner's socket must
    see no other owner's order, whichever process holds it."""
    frames: list[dict[str, Any]] = []
    seen: set[int] = set()
    while not want <= seen:
        frame = await ws.recv(timeout=20)
        assert frame["type"] == "order", frame
        if frame["order"]["owner_id"] in owner_ids:
            frames.append(frame)
            seen.add(frame["seq"])
        else:
            assert staff, f"an owner's socket got another owner's order: {frame}"
    return frames


@pytest.mark.parametrize("kind", ["workers", "two_processes"])
async def test_each_session_gets_each_event_once_across_processes(
        kind: str, db_url: str, tmp_path: Path, make_user, sql: psycopg.Connection) -> None:
    owners: list[User] = [make_user(), make_user()]
    staff: User = make_user(staff=True)
    owner_ids = [owner.id for owner in owners]
    start_seq = sql.execute("SELECT coalesce(max(seq), 0) FROM order_changes").fetchone()[0]
    with _nodes(kind, db_url, tmp_path) as nodes:
        async with contextlib.AsyncExitStack() as stack:
            sessions: list[tuple[Any, Socket]] = []
            for owner in owners:
                for i in range(SOCKETS_PER_OWNER):
                    ws = await stack.enter_async_context(open_socket(nodes[i % 2], owner))
                    await ws.subscribe_orders()
                    sessions.append((owner.id, ws))
            for node in nodes:
                ws = await stack.enter_async_context(open_socket(node, staff))
                await ws.subscribe_orders(owner="*")
                sessions.append(("*", ws))

            await asyncio.to_thread(_write_concurrently, db_url, owners)
            expected = _expected(sql, start_seq, owner_ids)
            assert len(expected["*"]) > 2 * BULK_ROWS + SINGLE_WRITES

            received = await asyncio.gather(*(
                _collect(ws, expected[key], set(owner_ids) if key == "*" else {key},
                         staff=key == "*")
                for key, ws in sessions))
            orders_by_key: dict[Any, list[list[int]]] = {}
            for (key, _), frames in zip(sessions, received, strict=True):
                seqs = [frame["seq"] for frame in frames]
                assert len(seqs) == len(set(seqs)), f"{kind}: a duplicate frame for {key}"
                assert set(seqs) == expected[key], f"{kind}: {key} got other events"
                orders_by_key.setdefault(key, []).append(seqs)
                # Each order's versions rise at every session.
                last: dict[int, int] = {}
                for frame in frames:
                    order = frame["order"]
                    assert order["version"] > last.get(order["id"], 0), frame
                    last[order["id"]] = order["version"]
            # Both processes hear notifications in commit order: every session of an owner
            # saw the very same sequence.
            for key, sequences in orders_by_key.items():
                assert all(seqs == sequences[0] for seqs in sequences), key

            # A cursor from one process resumes on the other.
            first_owner_frames = received[0]
            cursor = first_owner_frames[-1]["cursor"]
        order_id = insert_order(sql, owners[0].id, "RESUME")
        sql.execute("UPDATE orders SET price = 7 WHERE id = %s", (order_id,))
        async with open_socket(nodes[1] if kind == "two_processes" else nodes[0],
                               owners[0]) as ws:
            await ws.subscribe_orders(after=cursor)
            replayed = [await ws.recv_type("order"), await ws.recv_type("order")]
            assert [(f["op"], f["order"]["id"]) for f in replayed] == [
                ("insert", order_id), ("update", order_id)]
            await ws.assert_silent(0.2)
