"""The per-session quote box and how the sender interleaves it with queued frames: the newest
version per instrument wins, nothing older replaces it, quotes get their turn beside a stream
of order events, and a shut pipe gate holds quotes back (conflating) but never order events."""

from __future__ import annotations

import asyncio

from web.quotes import QuoteBox
from web.subscriber import QUOTE_TURN, FrameQueue


def test_the_newest_version_wins_and_older_ones_are_ignored():
    box = QuoteBox()
    assert box.offer("A", 5, "a5") is False
    assert box.offer("A", 4, "a4") is None  # older: ignored
    assert box.offer("A", 5, "a5 again") is None  # the same version: a duplicate
    assert box.offer("B", 1, "b1") is False
    assert box.offer("A", 7, "a7") is True  # replaced the unsent a5 (conflated)
    assert [box.take(), box.take()] == ["b1", "a7"]  # A was re-dirtied last: B first
    assert not box
    assert box.offer("A", 6, "a6") is None  # sent a7 already: still older


def test_keep_only_forgets_dropped_instruments():
    box = QuoteBox()
    box.offer("A", 3, "a3")
    box.offer("B", 3, "b3")
    box.keep_only(frozenset({"B"}))
    assert box.pending == {"B": "b3"}
    assert box.offer("A", 1, "a1") is False  # A starts afresh after subscribing again


async def test_quotes_get_a_turn_beside_a_stream_of_frames():
    queue = FrameQueue(1 << 20)
    for i in range(QUOTE_TURN * 2):
        queue.put(f"order{i}", event=True)
    queue.put_quote("A", 1, "quote")
    taken = [(await queue.get_events(1))[0] for _ in range(QUOTE_TURN * 2 + 1)]
    assert taken.index("quote") == QUOTE_TURN
    assert [t for t in taken if t != "quote"] == [f"order{i}" for i in range(QUOTE_TURN * 2)]


async def test_a_queued_reply_goes_before_the_quotes_it_acknowledges():
    queue = FrameQueue(1 << 20)
    queue.put("subscribed")
    queue.put_quote("A", 1, "quote")
    assert [(await queue.get_events(1))[0] for _ in range(2)] == ["subscribed", "quote"]


async def test_a_shut_gate_holds_quotes_and_conflates_them_but_not_frames():
    queue = FrameQueue(1 << 20)
    open_ = False
    queue.quote_room = lambda: 0 if open_ else -1
    queue.put_quote("A", 1, "a1")
    queue.put("pong")
    assert await queue.get_events(1) == ["pong"]  # frames flow while quotes wait
    getter = asyncio.create_task(queue.get_events(1))
    for version in range(2, 50):
        queue.put_quote("A", version, f"a{version}")
        await asyncio.sleep(0)
    assert not getter.done()
    open_ = True
    assert await asyncio.wait_for(getter, 1) == ["a49"]  # only the newest went out
    assert not queue.quotes
