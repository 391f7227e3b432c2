"""permessage-deflate by frame size (issue 8, "decide compression per frame size"): a client
that offers it gets frames of `ws_compress_min_bytes` or more compressed (batch frames,
mostly) and smaller ones as they are; the events are the same either way; 0 turns it off.

Each test's client records, for every message the server sent, whether it came compressed
(the RSV1 bit) and its size once decompressed, from inside websockets' own extension."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
import websockets
from websockets.extensions.base import Extension
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    PerMessageDeflate,
)
from websockets.frames import Frame, Opcode
from websockets.typing import ExtensionParameter

from tests.conftest import ROOT, ServerProcess, Socket, User, insert_order, running_server
from tests.support.in_process import serving_in_process
from web.frame_writer import FrameWriter
from web.protocols import LargeFrameDeflateFactory

COMPRESS_FROM = 4096  # settings.toml's default
BULK_ROWS = 300  # one statement: its events reach a batch subscriber in frames of many


class RecordingDeflate(PerMessageDeflate):
    """The client's side of the extension, noting (compressed?, bytes once decoded) per
    message received and whether each message it sent went compressed."""

    def __init__(self, negotiated: PerMessageDeflate) -> None:
        super().__init__(negotiated.remote_no_context_takeover,
                         negotiated.local_no_context_takeover,
                         negotiated.remote_max_window_bits, negotiated.local_max_window_bits,
                         negotiated.compress_settings)
        self.received: list[tuple[bool, int]] = []
        self.sent_compressed: list[bool] = []

    def decode(self, frame: Frame, *, max_size: int | None = None) -> Frame:
        decoded = super().decode(frame, max_size=max_size)
        if frame.opcode.name == "TEXT":
            self.received.append((frame.rsv1, len(decoded.data)))
        return decoded

    def encode(self, frame: Frame) -> Frame:
        encoded = super().encode(frame)
        if frame.opcode.name == "TEXT":
            self.sent_compressed.append(encoded.rsv1)
        return encoded


class RecordingFactory(ClientPerMessageDeflateFactory):
    def __init__(self) -> None:
        super().__init__()
        self.extension: RecordingDeflate | None = None

    def process_response_params(self, params: Sequence[ExtensionParameter],
                                accepted_extensions: Sequence[Extension]) -> PerMessageDeflate:
        self.extension = RecordingDeflate(
            super().process_response_params(params, accepted_extensions))
        return self.extension


async def _connect(server: ServerProcess, user: User, **options: Any) -> Socket:
    conn = await websockets.connect(server.ws_url, additional_headers=user.auth,
                                    open_timeout=5, max_size=2**23, **options)
    return Socket(conn)


async def _events(ws: Socket, count: int) -> list[dict[str, Any]]:
    """The next `count` order events, unpacked from whatever frames carry them."""
    events: list[dict[str, Any]] = []
    while len(events) < count:
        frame = await ws.recv()
        if frame["type"] == "batch":
            events += frame["events"]
        elif frame["type"] == "order":
            events.append(frame)
    assert len(events) == count
    return events


def _bulk_insert(sql: psycopg.Connection, owner_id: int, rows: int = BULK_ROWS) -> None:
    sql.execute("INSERT INTO orders (owner_id, instrument, quantity, price, note)"
                " SELECT %s, 'ZIP', i, 100 + i, repeat('n', i %% 50)"
                " FROM generate_series(1, %s) i", (owner_id, rows))


async def test_big_frames_come_compressed_and_small_ones_as_they_are(
        server: ServerProcess, make_user: Any, sql: psycopg.Connection) -> None:
    user = make_user()
    factory = RecordingFactory()
    ws = await _connect(server, user, extensions=[factory])
    try:
        # No compressor or decompressor is kept per socket between messages.
        assert ws.conn.response.headers["Sec-WebSocket-Extensions"] == (
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover")
        await ws.subscribe_orders(batch=True)
        # One live event on its own, then one statement's hundreds, packed into batches.
        sql.execute("INSERT INTO orders (owner_id, instrument, quantity, price)"
                    " VALUES (%s, 'ZIP', 1, 1)", (user.id,))
        assert (await _events(ws, 1))[0]["op"] == "insert"
        _bulk_insert(sql, user.id)
        events = await _events(ws, BULK_ROWS)
        assert [e["order"]["quantity"] for e in events] == [str(i) for i in range(1, 301)]
    finally:
        await ws.conn.close()
    extension = factory.extension
    assert extension is not None
    received = extension.received
    small = [compressed for compressed, size in received if size < COMPRESS_FROM]
    big = [compressed for compressed, size in received if size >= COMPRESS_FROM]
    # Proof that both kinds were sent: the replies and the live event, and batch frames.
    assert len(small) >= 2 and big, received
    assert not any(small), received
    assert all(big), received
    # The client compressed what it sent (its subscribe): the server read it all the same.
    assert extension.sent_compressed and all(extension.sent_compressed)


async def test_live_events_in_order_each_compressed_by_its_own_size(
        server: ServerProcess, make_user: Any, sql: psycopg.Connection) -> None:
    """Without batch: a transaction's small, big (a long note), small updates come in order,
    the big one compressed: live events offered straight to the socket, and a queued big
    frame sent through uvicorn between raw writes of small ones."""
    user = make_user()
    factory = RecordingFactory()
    ws = await _connect(server, user, extensions=[factory])
    try:
        await ws.subscribe_orders()
        ids = [insert_order(sql, user.id, "ZIP") for _ in range(3)]
        assert [e["order"]["id"] for e in await _events(ws, 3)] == ids
        extension = factory.extension
        assert extension is not None
        extension.received.clear()
        with sql.transaction():
            for order_id, note in zip(ids, ("short", "x" * 5000, "short"), strict=True):
                sql.execute("UPDATE orders SET note = %s WHERE id = %s", (note, order_id))
        events = await _events(ws, 3)
        assert [e["order"]["id"] for e in events] == ids
        assert [len(e["order"]["note"]) for e in events] == [5, 5000, 5]
        assert [compressed for compressed, _ in extension.received] == [False, True, False]
    finally:
        await ws.conn.close()


async def test_the_same_events_with_compression_and_without(
        server: ServerProcess, make_user: Any, sql: psycopg.Connection) -> None:
    user = make_user()
    deflated = await _connect(server, user)  # websockets offers permessage-deflate itself
    plain = await _connect(server, user, compression=None)
    try:
        assert "Sec-WebSocket-Extensions" in deflated.conn.response.headers
        assert "Sec-WebSocket-Extensions" not in plain.conn.response.headers
        for ws in (deflated, plain):
            await ws.subscribe_orders(batch=True)
        _bulk_insert(sql, user.id)
        sql.execute("UPDATE orders SET status = 'cancelled' WHERE owner_id = %s"
                    " AND quantity < 3", (user.id,))
        got = [await _events(ws, BULK_ROWS + 2) for ws in (deflated, plain)]
        assert got[0] == got[1]
        assert [e["op"] for e in got[0][-2:]] == ["update", "update"]
    finally:
        for ws in (deflated, plain):
            await ws.conn.close()


async def test_zero_turns_compression_off(db_url: str, tmp_path: Path, make_user: Any,
                                          sql: psycopg.Connection) -> None:
    user = make_user()
    with running_server(db_url, tmp_path, ORDERSTREAM_WS_COMPRESS_MIN_BYTES="0") as server:
        factory = RecordingFactory()
        ws = await _connect(server, user, extensions=[factory])
        try:
            assert "Sec-WebSocket-Extensions" not in ws.conn.response.headers
            assert factory.extension is None
            await ws.subscribe_orders(batch=True)
            _bulk_insert(sql, user.id)
            assert len(await _events(ws, BULK_ROWS)) == BULK_ROWS
        finally:
            await ws.conn.close()


def test_a_negative_size_is_refused_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "server.py"), "serve"], cwd=ROOT, capture_output=True,
        text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "ORDERSTREAM_DATA_DIR": str(tmp_path),
             "ORDERSTREAM_WS_COMPRESS_MIN_BYTES": "-1"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "server.py: setting 'ws_compress_min_bytes': must be 0 (never compress) or more, got -1"]


async def test_a_compressing_socket_still_takes_live_events_straight(
        db_url: str, tmp_path: Path, make_user: Any) -> None:
    """Frames below the size go past uvicorn's per-frame send (web/frame_writer.py) whether
    or not the client asked for compression: a browser always does."""
    user = make_user()
    async with (serving_in_process(db_url, tmp_path) as address,
                websockets.connect(address.ws_url, additional_headers=user.auth,
                                   open_timeout=5) as conn):
        assert "Sec-WebSocket-Extensions" in conn.response.headers
        await Socket(conn).subscribe_orders()
        writers = [o for o in gc.get_objects() if type(o) is FrameWriter]
        assert len(writers) == 1
        assert writers[0].takes_offers
        assert writers[0]._compress_from == COMPRESS_FROM


def test_the_extension_compresses_by_size_whatever_sends_it() -> None:
    """Frames that go through uvicorn's send (a socket closing, another server's protocol)
    follow the same rule as the ones web/frame_writer.py writes itself; a client decodes both."""
    server_side = LargeFrameDeflateFactory(COMPRESS_FROM)
    client_factory = ClientPerMessageDeflateFactory()
    response, extension = server_side.process_request_params(
        client_factory.get_request_params(), [])
    client = client_factory.process_response_params(response, [])
    small = b'{"type" : "pong", "id" : 1}'
    big = json.dumps({"type": "batch", "events": [{"seq": i} for i in range(1000)]}).encode()
    assert len(big) >= COMPRESS_FROM
    for payload, compressed in ((small, False), (big, True), (small, False), (big, True)):
        sent = extension.encode(Frame(Opcode.TEXT, payload))
        assert sent.rsv1 is compressed
        assert (len(sent.data) < len(payload) / 2) is compressed
        assert client.decode(sent).data == payload
    # A message in pieces is compressed or not as a whole, by its first piece.
    first = extension.encode(Frame(Opcode.TEXT, small, fin=False))
    rest = extension.encode(Frame(Opcode.CONT, big))
    assert not first.rsv1 and rest.data == big
