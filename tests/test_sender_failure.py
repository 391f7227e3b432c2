"""A socket whose sending fails on a bug is closed with 1011, not left open and silent: its
client reconnects and resumes from its cursor instead of waiting for events forever.

The fault is injected into the server running in this process (web/frame_writer.py's write
raises on the reply to a ping); everything else is real: port, socket, database."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import psycopg
import pytest
import websockets

from db.changelog import ChangeLog
from tests.conftest import Socket, insert_order
from tests.support.in_process import serving_in_process
from web.frame_writer import FrameWriter


async def test_a_sender_that_fails_closes_the_socket_with_1011(
        db_url: str, tmp_path: Path, make_user: Any, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    write = FrameWriter.write

    async def write_failing_on_pong(self: FrameWriter, frames: list[str]) -> None:
        if any('"pong"' in frame for frame in frames):
            raise KeyError("a bug")
        await write(self, frames)

    monkeypatch.setattr(FrameWriter, "write", write_failing_on_pong)
    user = make_user()
    with caplog.at_level(logging.ERROR, logger="web.ws"):
        async with (serving_in_process(db_url, tmp_path) as address,
                    websockets.connect(address.ws_url, additional_headers=user.auth,
                                       open_timeout=5) as conn):
            ws = Socket(conn)
            await ws.subscribe_orders()  # replies before the fault go out as ever
            await ws.send({"op": "ping", "id": 1})
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(conn.recv(), 5)
            assert closed.value.rcvd is not None
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1011, "internal error")
    failures = [r for r in caplog.records if "failed to send" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is not None
    assert failures[0].exc_info[0] is KeyError


async def test_live_events_that_fail_to_go_out_close_the_socket_and_resume_brings_them(
        db_url: str, tmp_path: Path, make_user: Any, sql: psycopg.Connection,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A live event offered straight to the socket and lost in a failed flush: the socket is
    closed with 1011, and resuming from the last cursor delivers that event."""
    flush = FrameWriter.flush
    failing = {"on": False}

    def flush_failing_while_on(self: FrameWriter) -> str | None:
        if failing["on"] and self._pending:
            raise KeyError("a bug")
        return flush(self)

    monkeypatch.setattr(FrameWriter, "flush", flush_failing_while_on)
    user = make_user()
    async with serving_in_process(db_url, tmp_path) as address:
        async with websockets.connect(address.ws_url, additional_headers=user.auth,
                                      open_timeout=5) as conn:
            ws = Socket(conn)
            cursor = (await ws.subscribe_orders())["cursor"]
            failing["on"] = True
            order_id = insert_order(sql, user.id)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(conn.recv(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
        failing["on"] = False
        async with websockets.connect(address.ws_url, additional_headers=user.auth,
                                      open_timeout=5) as conn:
            ws = Socket(conn)
            await ws.subscribe_orders(after=cursor)
            event = await ws.recv_type("order")
            assert (event["op"], event["order"]["id"]) == ("insert", order_id)


async def test_a_catch_up_read_that_fails_on_a_bug_closes_the_socket_with_1011(
        db_url: str, tmp_path: Path, make_user: Any, sql: psycopg.Connection,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a database that is away is worth retrying: anything else would fail the same way
    forever while the client, told `subscribed`, waits in silence."""
    read = ChangeLog.read

    async def read_failing_for_one_owner(self: ChangeLog, position: Any, owner: int | None,
                                         *args: Any) -> Any:
        if owner is not None:  # a session's own read (the listener reads every owner's)
            raise KeyError("a bug")
        return await read(self, position, owner, *args)

    monkeypatch.setattr(ChangeLog, "read", read_failing_for_one_owner)
    user = make_user()
    async with serving_in_process(db_url, tmp_path) as address:
        async with websockets.connect(address.ws_url, additional_headers=user.auth,
                                      open_timeout=5) as conn:
            ws = Socket(conn)
            cursor = (await ws.subscribe_orders())["cursor"]
            insert_order(sql, user.id)
            await ws.recv_type("order")
        async with websockets.connect(address.ws_url, additional_headers=user.auth,
                                      open_timeout=5) as conn:
            ws = Socket(conn)
            await ws.subscribe_orders(after=cursor)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(conn.recv(), 5)
            assert closed.value.rcvd is not None
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1011, "internal error")
