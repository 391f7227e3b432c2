"""db/notifications.py `PromptConnection`: notifications handed over as asyncpg parses them,
inside its read, not a turn of the event loop later; a handler that raises never reaches
asyncpg's parser; without a handler, asyncpg's own listeners get everything."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import pytest

from db.notifications import Notifications, PromptConnection

CHANNEL = "orderstream_test_prompt"


async def _connect(url: str) -> PromptConnection:
    conn = await asyncpg.connect(url, connection_class=PromptConnection)
    assert isinstance(conn, PromptConnection)
    return conn


async def _notify_together(url: str, payloads: list[str]) -> None:
    """One transaction: its notifications reach the listener in one read."""
    writer = await asyncpg.connect(url)
    try:
        async with writer.transaction():
            for payload in payloads:
                await writer.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)
    finally:
        await writer.close()


async def test_notifications_read_together_are_all_handed_over_before_the_next_turn(db_url):
    conn = await _connect(db_url)
    loop = asyncio.get_running_loop()
    heard: list[str] = []
    # What a handler schedules with call_soon runs after every notification of the read:
    # the flush after the listener has published them all.
    flushed_after: list[list[str]] = []
    done = loop.create_future()

    senders: set[tuple[int, str]] = set()

    def prompt(_conn: object, pid: int, channel: str, payload: str) -> None:
        senders.add((pid, channel))  # checked outside: what this raises is only logged
        if not heard:
            loop.call_soon(lambda: flushed_after.append(list(heard)))
        heard.append(payload)
        if len(heard) == 3 and not done.done():
            loop.call_soon(done.set_result, None)

    late: list[str] = []
    try:
        conn.prompt = prompt
        await conn.add_listener(CHANNEL, lambda *args: late.append(args[3]))
        await _notify_together(db_url, ["a", "b", "c"])
        await asyncio.wait_for(done, 5)
    finally:
        await conn.close()
    assert heard == ["a", "b", "c"]
    assert len(senders) == 1 and next(iter(senders))[1] == CHANNEL
    assert next(iter(senders))[0] > 0
    assert flushed_after == [["a", "b", "c"]]
    assert late == []  # asyncpg's own dispatch was not used as well


async def test_a_handler_that_raises_leaves_the_connection_working(db_url, caplog):
    conn = await _connect(db_url)
    heard: list[str] = []
    got_last = asyncio.get_running_loop().create_future()

    def prompt(_conn: object, pid: int, channel: str, payload: str) -> None:
        heard.append(payload)
        if payload == "boom":
            raise RuntimeError("a bug in the handler")
        if payload == "after" and not got_last.done():
            got_last.set_result(None)

    try:
        conn.prompt = prompt
        await conn.add_listener(CHANNEL, lambda *args: None)
        with caplog.at_level(logging.ERROR, logger="db.notifications"):
            await _notify_together(db_url, ["boom", "after"])
            await asyncio.wait_for(got_last, 5)
        # The parser went on past the failure: the rest of the read, and new queries.
        assert heard == ["boom", "after"]
        assert await conn.fetchval("SELECT 41 + 1") == 42
    finally:
        await conn.close()
    assert any("not handled" in r.getMessage() and r.exc_info for r in caplog.records)


@pytest.mark.parametrize("payloads", [["x"], ["x", "y"]])
async def test_without_a_handler_asyncpgs_listeners_get_everything(db_url, payloads):
    conn = await _connect(db_url)
    heard: list[str] = []
    done = asyncio.get_running_loop().create_future()

    def listener(_conn: object, _pid: int, _channel: str, payload: str) -> None:
        heard.append(payload)
        if len(heard) == len(payloads) and not done.done():
            done.set_result(None)

    try:
        await conn.add_listener(CHANNEL, listener)
        await _notify_together(db_url, payloads)
        await asyncio.wait_for(done, 5)
    finally:
        await conn.close()
    assert heard == payloads


async def test_a_notification_the_listener_fails_on_is_a_gap_for_its_reader(db_url):
    """Whatever the listener's handling raises, its reader hears "maybe missing" (None) and
    reads the log, then the notifications after it as usual."""
    notifications = Notifications(db_url, (CHANNEL,))
    await notifications.start()
    try:
        calls = []

        def arrival(channel: str, payload: str) -> bool:
            calls.append(payload)
            if payload == "bad":
                raise RuntimeError("a bug on arrival")
            return False  # queue it

        notifications.on_arrival = arrival
        await _notify_together(db_url, ["bad"])
        assert await asyncio.wait_for(notifications.get(), 5) is None
        await _notify_together(db_url, ["good"])
        assert await asyncio.wait_for(notifications.get(), 5) == (CHANNEL, "good")
        assert calls == ["bad", "good"]
    finally:
        await notifications.close()
