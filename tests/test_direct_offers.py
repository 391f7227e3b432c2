"""A live event goes straight to the socket only while the socket's sender waits on an empty
queue: never past a frame the sender was woken for or still holds, never for a `batch`
subscription (its events wait in the queue to be packed), and never waking the sender.
Quotes too, while the socket's pipe has room; else they wait in the box, conflated."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

from db.change import Change
from db.position import Snapshot
from tests.support.memory_log import MemoryLog
from web.frame_writer import Flusher, FrameWriter
from web.hub import Hub
from web.quotes import PIPE_BYTES
from web.subscriber import FrameQueue
from web.wire import text_frame


class Socket:
    """A direct sink that takes frames while `open`, else refuses them (a paused transport);
    it keeps the byte limit each offer came with, and refuses past it (FrameWriter.offer)."""

    def __init__(self) -> None:
        self.frames: list[str] = []
        self.open = True
        self.limits: list[int] = []

    def take(self, frame: str, most_pending: int) -> bool:
        self.limits.append(most_pending)
        taken = self.open and sum(map(len, self.frames)) <= most_pending
        if taken:
            self.frames.append(frame)
        return taken


async def parked(queue: FrameQueue, most: int = 10) -> asyncio.Task[list[str]]:
    """The sender, waiting on the queue (one turn of the loop takes it there)."""
    getter = asyncio.create_task(queue.get_events(most))
    await asyncio.sleep(0)
    assert not getter.done()
    return getter


async def test_offers_to_a_waiting_sender_go_straight_to_the_socket_without_waking_it():
    queue, socket = FrameQueue(1 << 20), Socket()
    queue.direct = socket.take
    getter = await parked(queue)
    queue.offer("e1")
    queue.offer("e2")
    await asyncio.sleep(0)
    assert socket.frames == ["e1", "e2"]
    assert not getter.done() and len(queue) == 0 and queue.bytes == 0
    queue.put("pong")  # anything queued still wakes it
    assert await getter == ["pong"]


async def test_offers_queue_behind_a_frame_the_sender_was_woken_for():
    queue, socket = FrameQueue(1 << 20), Socket()
    queue.direct = socket.take
    getter = await parked(queue)
    queue.put("pong")
    queue.offer("e1")  # the sender has not taken "pong" yet: e1 must not pass it
    assert socket.frames == []
    assert await getter == ["pong"]
    assert await queue.get_events(10) == ["e1"]
    # Taken and written: waiting again, it takes offers again.
    getter = await parked(queue)
    queue.offer("e2")
    assert socket.frames == ["e2"]
    getter.cancel()


async def test_a_refused_offer_queues_and_the_next_offers_queue_behind_it():
    queue, socket = FrameQueue(1 << 20), Socket()
    queue.direct = socket.take
    getter = await parked(queue)
    socket.open = False  # the transport paused
    queue.offer("e1")
    socket.open = True  # resumed before the sender ran: e2 must still wait behind e1
    queue.offer("e2")
    assert socket.frames == []
    assert await getter == ["e1", "e2"]


async def test_a_batch_subscription_gets_nothing_straight_away():
    hub = Hub(MemoryLog())
    async with hub.subscriber(1, False) as plain, hub.subscriber(1, False) as batched:
        sockets = {plain: Socket(), batched: Socket()}
        for sub, socket in sockets.items():
            hub.subscribe_orders(sub, 1)
            sub.queue.direct = socket.take
        batched.batch = True
        getters = [await parked(sub.queue) for sub in sockets]
        for seq in (1, 2):
            frame = json.dumps({"type": "order", "op": "update", "seq": seq, "ts": 1.5,
                                "order": {"id": 1, "owner_id": 1, "version": seq}})
            change = Change(seq, 100 + seq, 1, None, frame)
            hub.publish(change, hub.position.after_change(change.xid, seq,
                                                          Snapshot(change.xid)))
        assert [json.loads(f)["seq"] for f in sockets[plain].frames] == [1, 2]
        assert sockets[batched].frames == []
        assert [json.loads(f)["seq"] for f in await getters[1]] == [1, 2]  # packed later
        getters[0].cancel()


def quote(instrument: str, version: int) -> str:
    return json.dumps({"type": "quote", "instrument": instrument, "version": version})


async def test_quotes_to_a_waiting_sender_go_straight_to_the_socket_while_its_pipe_has_room():
    queue, socket = FrameQueue(1 << 20), Socket()
    queue.direct = socket.take
    getter = await parked(queue)
    assert queue.put_quote("A", 1, quote("A", 1)) is False
    assert queue.put_quote("B", 1, quote("B", 1)) is False
    await asyncio.sleep(0)
    assert socket.frames == [quote("A", 1), quote("B", 1)]
    assert set(socket.limits) == {PIPE_BYTES}  # the pipe's room, not the events' 64 KiB
    assert not getter.done() and not queue.quotes
    # The versions sent are remembered: an older quote (a late snapshot) is ignored.
    assert queue.put_quote("A", 1, quote("A", 1)) is None
    assert socket.frames == [quote("A", 1), quote("B", 1)]
    getter.cancel()


async def test_quotes_wait_in_the_box_when_the_pipe_is_full_and_conflate_there():
    queue, socket = FrameQueue(1 << 20), Socket()
    queue.direct = socket.take
    pipe_full = True
    queue.quote_room = lambda: -1 if pipe_full else PIPE_BYTES
    getter = await parked(queue)
    assert queue.put_quote("A", 1, quote("A", 1)) is False
    assert queue.put_quote("A", 2, quote("A", 2)) is True  # replaced the unsent one
    assert socket.frames == []
    await asyncio.sleep(0)
    assert not getter.done()  # woken, but the gate holds the quote back
    pipe_full = False
    assert await asyncio.wait_for(getter, 5) == [quote("A", 2)]


async def test_quotes_offered_in_one_turn_stop_at_the_pipes_room():
    queue, socket = FrameQueue(1 << 20), Socket()
    queue.direct = socket.take
    getter = await parked(queue)
    frames = [quote(f"I{i:04d}", 1) for i in range(PIPE_BYTES // 20)]
    for i, frame in enumerate(frames):
        queue.put_quote(f"I{i:04d}", 1, frame)
    taken = len(socket.frames)
    assert 0 < taken < len(frames)
    assert sum(map(len, socket.frames[:-1])) <= PIPE_BYTES
    # The rest wait in the box, in order, for the sender (woken by the first refused).
    rest = [(await asyncio.wait_for(getter, 5))[0]]
    while queue.quotes:
        rest += await queue.get_events(10)
    assert socket.frames + rest == frames


async def test_a_quote_never_passes_a_frame_the_sender_was_woken_for():
    queue, socket = FrameQueue(1 << 20), Socket()
    queue.direct = socket.take
    getter = await parked(queue)
    queue.put('{"type": "subscribed", "channel": "quotes"}')
    queue.put_quote("A", 1, quote("A", 1))
    assert socket.frames == []
    assert await getter == ['{"type": "subscribed", "channel": "quotes"}']
    assert await queue.get_events(10) == [quote("A", 1)]


class StuckPipe:
    """A transport whose reader has stopped: everything written stays in its pipe, until
    `drain`."""

    def __init__(self, held: int) -> None:
        self.held = held
        self.written = b""

    def write(self, data: bytes) -> None:
        self.held += len(data)
        self.written += data

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return self.held

    def drain(self) -> None:
        self.held = 0


def real_writer(transport: StuckPipe) -> FrameWriter:
    """A FrameWriter on uvicorn's protocol as FrameWriter reads it (the attributes it names),
    over `transport`: the one that takes offers in the server."""
    protocol = WebSocketsSansIOProtocol.__new__(WebSocketsSansIOProtocol)
    protocol.conn = SimpleNamespace(extensions=[], state=State.OPEN)
    protocol.transport = transport
    protocol.writable = asyncio.Event()
    protocol.writable.set()
    protocol.disconnected = protocol.close_sent = False
    protocol.handshake_complete = True
    protocol.initial_response = None
    writer = FrameWriter(protocol.send, Flusher())
    assert writer.takes_offers
    return writer


async def test_a_burst_of_quotes_fills_a_stuck_readers_pipe_no_further_than_its_room():
    pipe = StuckPipe(held=PIPE_BYTES - 100)  # nearly full: room for one quote
    queue, writer = FrameQueue(1 << 20), real_writer(pipe)
    queue.quote_room = lambda: PIPE_BYTES - pipe.held
    queue.direct = writer.offer

    async def sender() -> None:  # web/ws.py _send_loop, as far as quotes go
        while True:
            frames = await queue.get_events(10)
            writer.flush()
            await writer.write(frames)

    task = asyncio.create_task(sender())
    await asyncio.sleep(0)
    frames = [quote(f"I{i:03d}", 1) for i in range(100)]  # every instrument, after a gap
    for i, frame in enumerate(frames):
        queue.put_quote(f"I{i:03d}", 1, frame)
    for _ in range(20):
        await asyncio.sleep(0)
    one = len(text_frame(frames[0]))
    assert PIPE_BYTES < pipe.held <= PIPE_BYTES + one  # the gate shut after one quote
    # The reader reads again: the rest follow, in order, each once.
    while queue.quotes or not pipe.written.endswith(frames[-1].encode()):
        pipe.drain()
        await asyncio.sleep(0.02)
    task.cancel()
    assert pipe.written == b"".join(map(text_frame, frames))
