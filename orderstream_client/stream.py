"""The orders stream of an orderstream server: one WebSocket that subscribes, reconnects with
jittered backoff and resumes from its cursor, so a restart loses nothing and repeats nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections import deque
from types import TracebackType
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from orderstream_client.api import fetch_orders

log = logging.getLogger("orderstream_client")

Event = dict[str, Any]
Owner = int | Literal["*"]

# Reconnect delays (seconds): the first, doubled on each failure up to the cap, each drawn
# between half and all of that so clients of a restarted server do not all come at once.
RETRY_FIRST, RETRY_CAP = 0.25, 8.0
# No limit on the size of a frame received: an order's note has none in the table, so neither
# has the frame that carries it. With one, an order past it would close the connection each
# time it came, and every resume from the cursor before it would bring it again.
MAX_FRAME_BYTES = None
# The server gives its database listener this long (seconds) before it answers a subscribe
# with `unavailable` (web/ws.py LISTENER_WAIT_SECONDS): the answer is awaited this much
# longer than `open_timeout`, so the client hears it instead of giving up just before.
SERVER_LISTENER_WAIT = 10.0
# Refusals that reconnecting cannot fix: bad credentials, another origin, no /ws there.
FINAL_STATUSES = frozenset({401, 403, 404})
# Close codes that reconnecting cannot fix: 1008 policy (token revoked, account deleted,
# abuse). 1001 (server shutting down), 1011 and a dropped connection are retried.
FINAL_CLOSE_CODES = frozenset({1008})
# Answers that mean "not now": the handshake refused with 429 or 503 (the database cannot
# say who is asking), a close with 1013 (try again later) or 4429 (too many open sockets),
# and these subscribe errors (`unavailable`: the server's database listener is down).
BUSY_STATUSES = frozenset({429, 503})
BUSY_CLOSE_CODES = frozenset({1013, 4429})
RETRY_ERRORS = frozenset({"unavailable", "rate_limited"})


class StreamError(Exception):
    """The server refused the stream for good (credentials, rights, a bad cursor, a revoked
    token): reconnecting would not help."""


class StreamUnavailable(ConnectionError):
    """The server answered but cannot serve the stream just now (its database or its
    database listener is away, too many sockets): try again later. Only the first
    connection (entering `connect`) raises it; after that the stream retries by itself."""


_RETRYABLE = (OSError, TimeoutError, InvalidHandshake, ConnectionClosed)


def _close_error(exc: ConnectionClosed) -> Exception:
    """What the server closing the socket means: for good (`StreamError`), not now
    (`StreamUnavailable`), or a lost connection to resume (`exc` itself)."""
    code, reason = (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd is not None else (None, "")
    if code in FINAL_CLOSE_CODES:
        return StreamError(f"the server closed the stream: {code} {reason}")
    if code in BUSY_CLOSE_CODES:
        return StreamUnavailable(f"the server closed the socket: {code} {reason}")
    return exc


def ws_url(base_url: str) -> str:
    """The /ws address of a server at `base_url` (http(s):// or ws(s)://)."""
    parts = urlsplit(base_url)
    schemes = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
    if parts.scheme not in schemes or not parts.netloc:
        raise ValueError(f"base_url must be an http(s):// address, got {base_url!r}")
    return urlunsplit((schemes[parts.scheme], parts.netloc, parts.path.rstrip("/") + "/ws", "",
                       ""))


class Stream:
    """The order events a token may read: an async context manager and async iterator of
    dicts, each a WebSocket `order` frame or a `resync` frame (reload your state then, for
    instance with `Book.reload`). See `connect`."""

    def __init__(self, base_url: str, token: str, owner: Owner | None = None,
                 after: str | None = None, *, batch: bool = False,
                 retry_first: float = RETRY_FIRST, retry_cap: float = RETRY_CAP,
                 open_timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.url = ws_url(base_url)
        self._token = token
        self._wanted_owner = owner
        # Whose orders, as the server confirmed: a user id, or "*".
        self.owner: Owner | None = None
        self._cursor = after
        self._batch = batch
        # Whether the server packs events into batch frames, as it confirmed.
        self.batch = False
        self._retry_first = retry_first
        self._retry_cap = retry_cap
        self._open_timeout = open_timeout
        self._ws: ClientConnection | None = None
        self._pending: deque[Event] = deque()  # the rest of a batch frame
        self._opened = False  # connected once: later connections are reconnections
        # Connections tried since one last delivered an event: the exponent of the backoff.
        # Only an event resets it, so a server that accepts the subscription and then fails
        # at once (on every resume from the same cursor) is not asked again every retry_first.
        self._failures = 0
        self._closed = False
        self._closing = asyncio.Event()
        # Connections made after the first (a test that restarts the server checks it).
        self.reconnects = 0

    @property
    def cursor(self) -> str | None:
        """Where the stream stands: the cursor of the last event handed out (or of the
        subscription, before any). `connect(..., after=stream.cursor)` resumes there."""
        return self._cursor

    async def __aenter__(self) -> Stream:
        await self._open()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the socket; iteration ends."""
        self._closed = True
        self._closing.set()
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> Event:
        while True:
            if self._closed:  # before the rest of a batch: closing ends the iteration
                raise StopAsyncIteration
            if self._pending:
                return self._hand_out(self._pending.popleft())
            ws = self._ws
            if ws is None:
                if self._opened:
                    await self._reconnect()
                else:  # iterated without `async with`: connect now
                    await self._open()
                continue
            try:
                text = await ws.recv()
            except ConnectionClosed as exc:
                if self._closed:
                    raise StopAsyncIteration from None
                self._ws = None
                error = _close_error(exc)
                if isinstance(error, StreamError):
                    raise error from exc
                log.info("orderstream: connection lost (%s); reconnecting", exc)
                await self._reconnect()
                continue
            frame = json.loads(text)
            kind = frame.get("type")
            if kind in ("order", "resync", "batch"):
                self._failures = 0
            if kind in ("order", "resync"):
                return self._hand_out(frame)
            if kind == "batch":
                self._pending.extend(frame["events"])
            elif kind == "error":
                if frame.get("code") == "forbidden":  # the subscription was taken away
                    raise StreamError(f"forbidden: {frame.get('message')}")
                log.warning("orderstream: %s: %s", frame.get("code"), frame.get("message"))
            # Anything else (pong, quotes) is not part of the orders stream.

    async def fetch_orders(self) -> list[dict[str, Any]]:
        """Every order this stream watches, from `GET /api/orders` (see `Book.reload`)."""
        owner = self.owner if self.owner is not None else self._wanted_owner
        return await fetch_orders(self.base_url, self._token, owner)

    def _hand_out(self, event: Event) -> Event:
        cursor = event.get("cursor")
        if event.get("type") == "order" and isinstance(cursor, str):
            self._cursor = cursor
        return event

    async def _open(self) -> None:
        """Connect and subscribe (resuming after the cursor, once there is one)."""
        try:
            ws = await ws_connect(self.url, open_timeout=self._open_timeout,
                                  additional_headers={"Authorization": f"Bearer {self._token}"},
                                  max_size=MAX_FRAME_BYTES, compression=None)
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in FINAL_STATUSES:
                raise StreamError(f"the server refused the socket: HTTP {status}") from exc
            if status in BUSY_STATUSES:
                raise StreamUnavailable(f"the server cannot take the socket just now: HTTP"
                                        f" {status}") from exc
            raise
        try:
            await self._subscribe(ws)
        except BaseException:
            await ws.close()
            raise
        if self._closed:  # closed while we connected
            await ws.close()
            return
        self._ws = ws
        self._opened = True

    async def _subscribe(self, ws: ClientConnection) -> None:
        message: dict[str, Any] = {"op": "subscribe", "channel": "orders"}
        if self._wanted_owner is not None:
            message["owner"] = self._wanted_owner
        if self._cursor is not None:
            message["after"] = self._cursor
        if self._batch:
            message["batch"] = True
        try:
            await ws.send(json.dumps(message))
            async with asyncio.timeout(self._open_timeout + SERVER_LISTENER_WAIT):
                await self._subscribed(ws)
        except ConnectionClosed as exc:
            error = _close_error(exc)
            if error is exc:
                raise
            raise error from exc

    async def _subscribed(self, ws: ClientConnection) -> None:
        """Until the server's answer to subscribe: confirmed, or an error raised."""
        while True:
            frame = json.loads(await ws.recv())
            kind = frame.get("type")
            if kind == "subscribed" and frame.get("channel") == "orders":
                self.owner = frame.get("owner")
                self.batch = frame.get("batch") is True
                if self._cursor is None:
                    self._cursor = frame.get("cursor")
                return
            if kind == "error":
                text = f"{frame.get('code')}: {frame.get('message')}"
                if frame.get("code") in RETRY_ERRORS:
                    raise StreamUnavailable(f"subscribe: {text}")
                raise StreamError(f"subscribe refused: {text}")

    async def _reconnect(self) -> None:
        """Until connected and subscribed again (or closed), with jittered capped backoff."""
        while not self._closed:
            # The exponent stops growing long after the cap is reached (2**1100 is no float).
            ceiling = min(self._retry_cap, self._retry_first * 2 ** min(self._failures, 30))
            self._failures += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), random.uniform(ceiling / 2, ceiling))
            if self._closed:
                return
            try:
                await self._open()
            except _RETRYABLE as exc:
                log.info("orderstream: reconnect failed (%s); retrying", exc)
                continue
            self.reconnects += 1
            return


def connect(base_url: str, *, token: str, owner: Owner | None = None,
            after: str | None = None, batch: bool = False, retry_first: float = RETRY_FIRST,
            retry_cap: float = RETRY_CAP, open_timeout: float = 10.0) -> Stream:
    """The orders stream of the server at `base_url` (``http://host:port``), as `token`'s
    user may read it: its own orders, or with `owner` (staff) one user id's or "*" for
    everyone's. With `after` (a cursor from an earlier stream) it starts with what was
    missed since. With `batch`, the server packs events that wait together into `batch`
    frames (fewer frames for a program that reads many events; docs/protocol.md); the
    stream still hands them out one by one, each with its cursor, so nothing else changes.

    Use it as ``async with connect(...) as stream: async for event in stream: ...``.
    Entering connects and subscribes. It raises what `websockets` does if the server cannot
    be reached (`OSError`, `TimeoutError` past `open_timeout`, `InvalidHandshake` for an
    answer that is no WebSocket handshake, `ConnectionClosed` for a socket closed before
    the subscribe is answered), `StreamUnavailable` (an `OSError` too) if the
    server answers that it cannot serve the stream just now, and `StreamError` if it refuses
    for good. After that, a lost connection is retried with jittered backoff (from
    `retry_first` seconds, doubling up to `retry_cap`, back to `retry_first` once a
    connection delivers an event) and resumed from `stream.cursor`, without a gap or a
    repeat. Frames of any size are taken.
    """
    return Stream(base_url, token, owner, after, batch=batch, retry_first=retry_first,
                  retry_cap=retry_cap, open_timeout=open_timeout)
