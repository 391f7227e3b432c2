"""The WebSocket endpoint /ws: authenticate, then speak the subscribe/ping protocol."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.routing import WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from db.failures import DATABASE_ERRORS
from db.position import CursorError, Position
from db.queries import MAX_BIGINT
from db.rights import load_rights
from web import quotes
from web.admission import TOO_MANY_SOCKETS, deny, too_many_sockets
from web.auth import WebUser, auth_failure, current_user, rights_unchanged_since_auth
from web.csrf import same_origin
from web.errors import failure_error, shown
from web.frame_writer import FrameWriter
from web.frames import ALL_OWNERS, OwnerKey
from web.hub import Hub
from web.metrics import SAMPLER
from web.subprotocol import SUBPROTOCOL, chosen_subprotocol, token_without_subprotocol
from web.subscriber import CLOSE, Mode, Subscriber

log = logging.getLogger(__name__)

# Where the endpoint leaves what follows an accepted handshake, for run_socket.
CONVERSATION = "orderstream.conversation"
MAX_MESSAGE_CHARS = 16 * 1024
# Events packed into one `batch` frame at most (for subscriptions with "batch": true).
MAX_BATCH = 500
# Token bucket: a client may send RATE_PER_SECOND messages on average, BURST at once.
RATE_PER_SECOND = 20.0
BURST = 60
# After this many refused (rate-limited or oversized) messages the socket is closed.
MAX_VIOLATIONS = 20
LISTENER_WAIT_SECONDS = 10.0


def _frame(**fields: Any) -> str:
    return json.dumps(fields)


def error_frame(code: str, message: str) -> str:
    return _frame(type="error", code=code, message=message)


def _not_json(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    """JSON numbers only: 1e999 would come back as Infinity, which is not JSON either."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


class _RateLimit:
    def __init__(self) -> None:
        self.tokens = float(BURST)
        self.stamp = time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(BURST, self.tokens + (now - self.stamp) * RATE_PER_SECOND)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class Protocol:
    """One socket's conversation: parse client frames, change subscriptions, queue answers."""

    def __init__(self, websocket: WebSocket, sub: Subscriber) -> None:
        self.websocket = websocket
        self.sub = sub
        self.state = websocket.state
        self.hub: Hub = websocket.state.hub

    def reply(self, frame: str) -> None:
        self.sub.reply(frame)

    def error(self, code: str, message: str) -> None:
        self.reply(error_frame(code, message))

    async def handle_text(self, text: str) -> None:
        try:
            message = json.loads(text, parse_constant=_not_json, parse_float=_finite)
        except ValueError:
            self.error("bad_json", "frames must be JSON text")
            return
        except RecursionError:  # json's nesting limit (about 1000): "[[[[..." fits 16 KiB
            self.error("bad_json", "frames must not nest that deeply")
            return
        if not isinstance(message, dict):
            kind = type(message).__name__
            self.error("bad_request", f"a frame must be a JSON object, got {kind}")
            return
        if "op" not in message:
            self.error("unknown_op", "a frame needs an op: subscribe, unsubscribe or ping")
            return
        op = message["op"]
        if op == "ping":
            try:
                pong = json.dumps({"type": "pong", "id": message.get("id")})
            except RecursionError:  # an id that just parsed is one level deeper in the pong
                self.error("bad_request", "a ping id must not nest that deeply")
                return
            self.reply(pong)
        elif op == "subscribe":
            await self.subscribe(message)
        elif op == "unsubscribe":
            self.unsubscribe(message)
        else:
            self.error("unknown_op",
                       f"unknown op {shown(op)}; expected subscribe, unsubscribe or ping")

    def _channel(self, message: dict[str, Any]) -> str | None:
        """The (un)subscription's channel, "orders" or "quotes"; None after saying why not."""
        if "channel" not in message:
            self.error("bad_request",
                       f'{message["op"]} needs a channel: "orders" or "quotes"')
            return None
        channel = message["channel"]
        if channel not in ("orders", "quotes"):
            self.error("bad_request",
                       f"unknown channel {shown(channel)}; expected \"orders\" or \"quotes\"")
            return None
        return channel

    async def subscribe(self, message: dict[str, Any]) -> None:
        channel = self._channel(message)
        if channel == "orders":
            await self.subscribe_orders(message)
        elif channel == "quotes":
            await self.subscribe_quotes(message)

    def _owner_key(self, message: dict[str, Any]) -> OwnerKey | None:
        sub = self.sub
        owner = message.get("owner", sub.user_id)
        if owner == ALL_OWNERS:
            key: OwnerKey = ALL_OWNERS
        elif isinstance(owner, int) and not isinstance(owner, bool) and 0 < owner <= MAX_BIGINT:
            key = owner
        else:
            self.error("bad_request", f"owner must be a user id or \"*\", got {shown(owner)}")
            return None
        if key != sub.user_id and not sub.is_staff:
            self.error("forbidden", "only staff may subscribe to other owners' orders")
            return None
        return key

    async def subscribe_orders(self, message: dict[str, Any]) -> None:
        key = self._owner_key(message)
        if key is None:
            return
        batch = message.get("batch", False)
        if not isinstance(batch, bool):
            self.error("bad_request", f"batch must be true or false, got {shown(batch)}")
            return
        position = None
        if "after" in message:
            try:
                position = Position.parse(message["after"])
            except CursorError as exc:
                self.error("bad_request", f"{exc.reason}, got {shown(exc.value)}")
                return
        listener = self.state.listener
        if not await listener.wait_listening(LISTENER_WAIT_SECONDS):
            self.error("unavailable", "the server is not receiving database events; retry")
            return
        # Rights may have changed while we waited: check again, then, with no await between
        # registering and queueing `subscribed`, every event the hub publishes from here
        # on lands behind it (a resume reads what came before from the log).
        if self._owner_key(message) != key or self.sub.closing:
            return
        where = ({"cursor": self.hub.position.cursor()} if position is None
                 else {"after": message["after"]})
        extra = {"batch": True} if batch else {}
        self.reply(_frame(type="subscribed", channel="orders", owner=key,
                          seq=self.hub.last_seq, **where, **extra))
        self.sub.batch = batch
        self.hub.subscribe_orders(self.sub, key, after=position)

    async def subscribe_quotes(self, message: dict[str, Any]) -> None:
        await quotes.subscribe(self, message, LISTENER_WAIT_SECONDS)

    def unsubscribe(self, message: dict[str, Any]) -> None:
        channel = self._channel(message)
        if channel is None:
            return
        if channel == "orders":
            self.hub.unsubscribe_orders(self.sub)
        else:
            self.hub.unsubscribe_quotes(self.sub)
        self.reply(_frame(type="unsubscribed", channel=channel))


async def run_socket(chain: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """Run a WebSocket through `chain` (every middleware, the router, the endpoint) for its
    handshake, then, outside it, the conversation the endpoint hands over through the scope.

    Each middleware layer is a coroutine suspended for as long as its app runs, with the
    closures it wraps `send` in: about 60 objects per socket that every full pass of the
    garbage collector reads, a second's pause with 10,000 sockets open (docs/benchmarks.md,
    "Garbage"). They only act on HTTP responses and on the handshake (sessions,
    authentication, refusals), so once the socket is accepted the conversation needs none
    of them; it gets `receive` and `send` as the server gave them (uvicorn's own, unless
    its trace logging wraps them), and frames take no detour."""
    later = scope[CONVERSATION] = _Later()
    try:
        await chain(scope, receive, send)
    finally:
        # The conversation holds the scope: no cycle left however the chain ended.
        del scope[CONVERSATION]
        conversation, later.conversation = later.conversation, None
        del later
    if conversation is not None:
        running = conversation(receive, send)
        del conversation  # neither it nor the holder stays for the socket's life
        await running


class _Later:
    """Where the endpoint leaves an accepted socket's conversation for run_socket: an object
    in the scope, so that a copy of the scope made on the way in hands it over as well."""

    __slots__ = ("conversation",)

    def __init__(self) -> None:
        self.conversation: Callable[[Receive, Send], Awaitable[None]] | None = None


async def _send_loop(websocket: WebSocket, sub: Subscriber, hub: Hub, send: Send) -> None:
    """Write what the queue holds through `send`, as the server gave it (a method of uvicorn's
    protocol: FrameWriter writes past it where it can)."""
    counters = hub.counters
    sub.queue.quote_room = quotes.pipe_room(send)
    # Offered frames that failed to go out are lost: closed with 1011, the client resumes
    # from its cursor and gets them from the change log.
    writer = FrameWriter(send, websocket.state.flusher, counters,
                         on_failure=lambda: sub.close(1011, "internal error"))
    if writer.takes_offers:  # live events skip the queue while it is empty
        sub.queue.direct = writer.offer
    try:
        while True:
            # Every event ready, in one go: a batch frame if the client asked for them, else
            # one frame each, written to the socket together.
            frames = await sub.queue.get_events(MAX_BATCH)
            writer.flush()  # events offered before these were queued go first
            if frames[0] is CLOSE:
                await websocket.close(code=sub.close_code, reason=sub.close_reason)
                return
            if len(frames) > 1 and sub.batch:
                # Events are JSON objects already: the batch is assembled, never re-encoded.
                await writer.write(['{"type": "batch", "events": [' + ",".join(frames) + "]}"])
                counters.frames_sent += 1
            else:
                await writer.write(frames)
                counters.frames_sent += len(frames)
            if sub.mode is Mode.CURRENT:  # replayed events would count their age as latency
                SAMPLER.sample(frames[-1])
    except (WebSocketDisconnect, OSError):
        raise  # the client is gone
    except Exception:
        if websocket.application_state is WebSocketState.DISCONNECTED:
            raise  # a write that met the socket's own close: nothing failed
        # A bug: without this the socket would stay open and silent, the client waiting
        # for events that never come. With 1011 it reconnects and resumes from its cursor.
        log.exception("socket of user %s failed to send", sub.user_id)
        with contextlib.suppress(Exception):
            await websocket.close(code=1011, reason="internal error")
    finally:
        sub.queue.direct = None


async def websocket_endpoint(websocket: WebSocket) -> None:
    # Only run_socket (web/app.py's App) runs a socket's conversation: elsewhere, refuse
    # the handshake loudly (a 500 and a traceback) rather than accept a socket nobody serves.
    later: _Later = websocket.scope[CONVERSATION]
    if token_without_subprotocol(websocket.scope):
        await websocket.close(code=1008, reason=f"offer {SUBPROTOCOL} beside the"
                                                " bearer.<token> subprotocol")
        return
    failure = auth_failure(websocket)
    if failure is not None:  # the database could not say who this is: 503, not 403
        await deny(websocket, failure_error(failure))
        return
    user = current_user(websocket)
    if user is None:
        await websocket.close(code=1008, reason="authentication required")
        return
    if not same_origin(websocket, websocket.state.settings.allowed_origins):
        await websocket.close(code=1008, reason="origin not allowed")
        return
    # Never the bearer.<token> subprotocol: the answer must not carry the secret.
    await websocket.accept(subprotocol=chosen_subprotocol(websocket.scope))
    later.conversation = functools.partial(_accepted, websocket.scope, user)


async def _accepted(scope: Scope, user: WebUser, receive: Receive, send: Send) -> None:
    """An accepted socket's life, run by run_socket on the server's own receive and send."""
    websocket = WebSocket(scope, receive, send)
    websocket.client_state = websocket.application_state = WebSocketState.CONNECTED
    hub: Hub = websocket.state.hub
    async with hub.subscriber(user.id, user.is_staff, user.token_id, user.session_id) as sub:
        # Counted once registered, with no await in between: concurrent handshakes of one
        # user cannot all slip under the cap.
        limit = websocket.state.settings.max_sockets_per_user
        if too_many_sockets(hub.sockets_of(user.id), limit):
            await websocket.close(code=TOO_MANY_SOCKETS,
                                  reason=f"at most {limit} open sockets per user")
            return
        if not rights_unchanged_since_auth(websocket):
            try:
                hub.narrow(sub, await load_rights(websocket.state.pool, hub.identities_of(sub)))
            except DATABASE_ERRORS as exc:
                log.warning("socket of user %s: rights could not be read: %s", user.id, exc)
                await websocket.close(code=1013, reason="the database is unavailable;"
                                                        " retry shortly")
                return
        await _converse(websocket, sub, hub, user.id, send)


async def _converse(websocket: WebSocket, sub: Subscriber, hub: Hub, user_id: int,
                    send: Send) -> None:
    protocol = Protocol(websocket, sub)
    sender = asyncio.create_task(_send_loop(websocket, sub, hub, send), name=f"ws-send-{user_id}")
    limit = _RateLimit()
    violations = 0
    try:
        while not sender.done():
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            if sub.closing:
                continue  # the sender closes the socket after what is queued; ignore the rest
            text = message.get("text")
            if text is None:
                protocol.error("bad_request", "binary frames are not supported; send JSON text")
                violations += 1
            elif len(text) > MAX_MESSAGE_CHARS:
                protocol.error("too_large", f"frames are limited to {MAX_MESSAGE_CHARS} characters")
                violations += 1
            elif not limit.allow():
                protocol.error("rate_limited", f"at most {RATE_PER_SECOND:g} messages per second")
                violations += 1
            else:
                try:
                    await protocol.handle_text(text)
                except (WebSocketDisconnect, asyncio.CancelledError):
                    raise
                except DATABASE_ERRORS as exc:
                    # The database failed this frame's query (a quote snapshot, say): the
                    # socket stays, the client may send it again.
                    log.warning("socket of user %s: database failed a frame: %s", user_id, exc)
                    protocol.error("unavailable", "the database is unavailable; retry shortly")
                except Exception:
                    # A bug, not the client's doing: say so with 1011 instead of dropping
                    # the TCP connection without a close frame.
                    log.exception("socket of user %s failed on a frame", user_id)
                    sub.close(1011, "internal error")
            if violations > MAX_VIOLATIONS:
                # Behind the error frames already queued: the client learns why.
                sub.close(1008, "too many refused messages")
    except WebSocketDisconnect:
        pass
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError,
                                 OSError):
            await sender


routes = [WebSocketRoute("/ws", websocket_endpoint)]
