"""`python server.py tail`: psql writes as JSON lines (the WebSocket's frames), `--after`
with exactly what was missed and then live events, `--owner`, Ctrl-C, and refusals."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import IO, Any

import psycopg

from tests.conftest import ROOT, ServerProcess, User, insert_order, open_socket
from tests.support.database import new_user, own_database


class Tail:
    """`server.py tail ARGS` in a subprocess; its output lines read by threads, so a test
    waits for a line with a timeout and never blocks for good."""

    def __init__(self, db_url: str, *args: str) -> None:
        env = {**os.environ, "DATABASE_URL": db_url, "ORDERSTREAM_LOG_LEVEL": "warning"}
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "server.py"), "tail", *args],
                                     cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.out: queue.Queue[str | None] = queue.Queue()
        self.err: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._pump, args=(stream, lines), daemon=True).start()

    @staticmethod
    def _pump(stream: IO[str] | None, lines: queue.Queue[str | None]) -> None:
        assert stream is not None
        for line in stream:
            lines.put(line)
        lines.put(None)

    def wait_ready(self, timeout: float = 30.0) -> str:
        """Until tail says what it follows (every commit after that line is printed)."""
        while True:
            line = self.err.get(timeout=timeout)
            if line is None:
                raise AssertionError(f"tail exited {self.proc.wait()}: {''.join(self.stderr)}")
            self.stderr.append(line)
            if line.startswith("tail: "):
                return line

    def event(self, timeout: float = 10.0) -> dict[str, Any]:
        line = self.out.get(timeout=timeout)
        assert line is not None, f"tail ended: {''.join(self.stderr)}"
        assert line.endswith("\n")
        frame: dict[str, Any] = json.loads(line)
        return frame

    def assert_silent(self, timeout: float = 0.5) -> None:
        """Prove no further line comes: wait `timeout` for one and expect none."""
        try:
            line = self.out.get(timeout=timeout)
        except queue.Empty:
            return
        raise AssertionError(f"expected no more output, got {line!r}")

    def interrupt(self, timeout: float = 15.0) -> int:
        """Ctrl-C; the exit code."""
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout)
        while (line := self.err.get(timeout=timeout)) is not None:
            self.stderr.append(line)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@contextlib.contextmanager
def tail(db_url: str, *args: str) -> Iterator[Tail]:
    process = Tail(db_url, *args)
    try:
        process.wait_ready()
        yield process
    finally:
        process.close()


def _without_cursor(frame: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in frame.items() if k != "cursor"}


async def test_tail_prints_psql_writes_as_the_sockets_frames(
        db_url: str, server: ServerProcess, make_user: Any, sql: psycopg.Connection) -> None:
    user: User = make_user()
    async with open_socket(server, user) as ws:
        await ws.subscribe_orders()
        with tail(db_url, "--owner", user.username) as t:
            order_id = insert_order(sql, user.id)
            sql.execute("UPDATE orders SET price = price + 1 WHERE id = %s", (order_id,))
            sql.execute("DELETE FROM orders WHERE id = %s", (order_id,))
            printed = [await asyncio.to_thread(t.event) for _ in range(3)]
            sent = [await ws.recv() for _ in range(3)]
            assert [(f["op"], f["order"]["id"], f["order"]["version"]) for f in printed] == [
                ("insert", order_id, 1), ("update", order_id, 2), ("delete", order_id, 2)]
            assert printed[1]["order"]["price"] == "102.5"
            # The same frames a socket gets, each with a cursor of its own.
            assert [_without_cursor(f) for f in printed] == [_without_cursor(f) for f in sent]
            assert all(f["cursor"].startswith("p") for f in printed)
            assert t.interrupt() == 0


def test_tail_after_prints_exactly_what_was_missed_then_live(
        db_url: str, make_user: Any, sql: psycopg.Connection) -> None:
    user: User = make_user()
    with tail(db_url, "--owner", user.username) as t:
        first = insert_order(sql, user.id)
        seen = t.event()
        assert seen["order"]["id"] == first
        # Ctrl-C ends it quietly, with 0.
        assert t.interrupt() == 0
        assert t.out.get(timeout=5) is None
        assert "Traceback" not in "".join(t.stderr), t.stderr

    # While nothing tails: inserts, an update, a delete.
    second = insert_order(sql, user.id, price="2")
    third = insert_order(sql, user.id, price="3")
    sql.execute("UPDATE orders SET status = 'filled' WHERE id = %s", (second,))
    sql.execute("DELETE FROM orders WHERE id = %s", (first,))

    with tail(db_url, "--owner", user.username, "--after", seen["cursor"]) as t:
        missed = [t.event() for _ in range(4)]
        assert [(f["op"], f["order"]["id"]) for f in missed] == [
            ("insert", second), ("insert", third), ("update", second), ("delete", first)]
        live = insert_order(sql, user.id, price="4")
        frame = t.event()
        assert (frame["op"], frame["order"]["id"]) == ("insert", live)
        t.assert_silent()
        assert t.interrupt() == 0


def test_tail_after_a_big_gap_while_writes_go_on(db_url: str, make_user: Any,
                                                 sql: psycopg.Connection) -> None:
    """3000 missed changes (one statement, announced in bulk) replayed from the log while
    single-row writes keep committing: each event once, the live ones in commit order."""
    user: User = make_user()
    with tail(db_url, "--owner", user.username) as t:
        insert_order(sql, user.id)
        start = t.event()["cursor"]
        assert t.interrupt() == 0
    bulk = [row[0] for row in sql.execute(
        "INSERT INTO orders (owner_id, instrument, quantity, price)"
        " SELECT %s, 'BULK', 1, g FROM generate_series(1, 3000) g RETURNING id",
        (user.id,)).fetchall()]
    live: list[int] = []

    def write() -> None:
        with psycopg.connect(db_url, autocommit=True) as conn:
            live.extend(insert_order(conn, user.id, price=str(n)) for n in range(200))

    with tail(db_url, "--owner", user.username, "--after", start) as t:
        writer = threading.Thread(target=write)
        writer.start()
        seen = [t.event()["order"]["id"] for _ in range(len(bulk) + 200)]
        writer.join()
        t.assert_silent()
    assert sorted(seen[:len(bulk)]) == sorted(bulk)
    assert seen[len(bulk):] == live


def test_tail_owner_picks_whose_orders(db_url: str, make_user: Any,
                                       sql: psycopg.Connection) -> None:
    alice: User = make_user()
    bob: User = make_user()
    with tail(db_url, "--owner", alice.username) as mine, tail(db_url) as everyone:
        theirs = insert_order(sql, bob.id)
        own = insert_order(sql, alice.id)
        sql.execute("UPDATE orders SET owner_id = %s WHERE id = %s", (bob.id, own))
        first, moved = mine.event(), mine.event()
        assert (first["op"], first["order"]["id"]) == ("insert", own)
        # Moved away: alice's view gets a delete at the move's version (a tombstone).
        assert moved["op"] == "delete"
        assert moved["order"] == {"id": own, "owner_id": alice.id, "version": 2}
        mine.assert_silent()
        # Without --owner: everyone's, and the move is an update.
        seen = [everyone.event() for _ in range(3)]
        assert [(f["op"], f["order"]["id"], f["order"]["owner_id"]) for f in seen] == [
            ("insert", theirs, bob.id), ("insert", own, alice.id), ("update", own, bob.id)]


def test_tail_says_resync_when_the_log_cannot_replay(server_url: str) -> None:
    """TRUNCATE orders is not in the change log: tail prints `resync`, as a socket gets."""
    with own_database(server_url, "tail_truncate") as url:
        user = new_user(url)
        with psycopg.connect(url, autocommit=True) as conn, tail(url) as t:
            insert_order(conn, user.id)
            assert t.event()["op"] == "insert"
            conn.execute("TRUNCATE orders")
            assert t.event() == {"type": "resync", "reason": "orders truncated"}
            later = insert_order(conn, user.id)
            assert t.event()["order"]["id"] == later


def _refused(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": db_url, "ORDERSTREAM_LOG_LEVEL": "warning"}
    return subprocess.run([sys.executable, str(ROOT / "server.py"), "tail", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60, check=False)


def test_tail_refuses_an_unknown_owner_in_one_line(db_url: str) -> None:
    done = _refused(db_url, "--owner", "nobody_at_all")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "server.py tail: no user 'nobody_at_all' (--owner takes a username, or '*' for "
        "everyone)"]


def test_tail_refuses_a_malformed_cursor(db_url: str) -> None:
    done = _refused(db_url, "--after", "yesterday")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ['server.py tail: not a cursor: "yesterday"']
