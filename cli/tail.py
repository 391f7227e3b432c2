"""`server.py tail`: the orders stream as JSON lines on stdout, straight from the database.

No server is involved: tail runs what a server process runs (the listener, the hub, a
subscriber with its own position in the change log) and prints what a WebSocket session
would be sent, one frame per line, cursor included. It is the database's operator, not a
user: no user's rights apply, and `--owner` only picks whose orders to show.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Coroutine
from typing import Any, TextIO

import asyncpg

import config
from db import queries
from db.changelog import ChangeLog
from db.listener import Listener
from db.position import CursorError, Position
from db.rights import Identities, Rights
from web.errors import shown
from web.frames import ALL_OWNERS, OwnerKey
from web.hub import Hub
from web.subscriber import CLOSE, Subscriber

# The subscriber's user id: nobody (tail reads as the operator).
OPERATOR = 0
# Lines written at once when events wait together (a big statement).
MAX_LINES = 500


class TailError(Exception):
    """A request tail cannot follow (an unknown owner, a malformed cursor)."""


class _OperatorHub(Hub):
    """A hub for one reader who is the database's operator: there are no sockets whose
    rights the stream must re-check, and none to take away."""

    def identities(self, user_id: int | None = None) -> Identities:
        return Identities(users=set(), tokens=set(), web_sessions=set())

    def identities_of(self, sub: Subscriber) -> Identities:
        return self.identities()

    def apply_rights(self, checked: Identities, rights: Rights) -> None:
        return None

    def narrow(self, sub: Subscriber, rights: Rights) -> None:
        return None


def parse_after(after: str | None) -> Position | None:
    if after is None:
        return None
    try:
        return Position.parse(after)
    except CursorError as exc:
        raise TailError(f"{exc.reason}: {shown(exc.value)}") from None


async def _owner_key(log: ChangeLog, owner: str) -> OwnerKey:
    if owner == ALL_OWNERS:
        return ALL_OWNERS
    user = await queries.user_by_name(log.pool, owner)
    if user is None:
        raise TailError(f"no user {owner!r} (--owner takes a username, or '*' for everyone)")
    return user.id


def _write(out: TextIO, frames: list[str]) -> None:
    out.write("\n".join(frames) + "\n")
    out.flush()


async def _print_frames(sub: Subscriber, out: TextIO) -> None:
    while True:
        frames = await sub.queue.get_events(MAX_LINES)
        if frames[0] is CLOSE:
            return
        # In a thread: a slow reader of our stdout must not stop the listener. Meanwhile
        # the queue fills, and past its budget the subscriber reads the log later instead,
        # exactly as a slow socket does.
        await asyncio.to_thread(_write, out, frames)


async def tail(url: str, settings: config.Settings, owner: str = ALL_OWNERS,
               after: str | None = None, out: TextIO = sys.stdout,
               status: TextIO = sys.stderr) -> None:
    """Print the order events of `owner` (a username, or "*") as JSON lines on `out` until
    SIGINT or SIGTERM; with `after`, first every event since that cursor."""
    position = parse_after(after)
    log = ChangeLog(url, 2, settings.log_statement_timeout_ms, "orderstream-tail-log")
    await log.open()
    try:
        key = await _owner_key(log, owner)
        hub = _OperatorHub(log, settings.session_queue_bytes)
        listener = Listener(url, hub, settings.listener_queue_size,
                            log_statement_timeout_ms=settings.log_statement_timeout_ms)
        await listener.start()
        try:
            async with hub.subscriber(OPERATOR, is_staff=True) as sub:
                # Registered with no await since the listener's start: every change committed
                # after its snapshot comes live; a resume reads what came before from the log.
                hub.subscribe_orders(sub, key, after=position)
                whose = "everyone" if key == ALL_OWNERS else f"{owner} (id {key})"
                where = after if after is not None else hub.position.cursor()
                print(f"tail: orders of {whose} after {where}; Ctrl-C to stop", file=status,
                      flush=True)
                await _until_signal(_print_frames(sub, out))
        finally:
            await listener.close()
    finally:
        await log.close()


async def _until_signal(work: Coroutine[Any, Any, None]) -> None:
    """Run `work` until it ends (raising what it raised) or SIGINT/SIGTERM arrives."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        stopper.cancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stopper
        with contextlib.suppress(asyncio.CancelledError):
            await task


def run(url: str, settings: config.Settings, owner: str, after: str | None) -> int:
    """The command: 0 when stopped by Ctrl-C (or its reader going away), 2 on a bad
    request, 1 when the database cannot be read."""
    try:
        asyncio.run(tail(url, settings, owner, after))
    except TailError as exc:
        print(f"server.py tail: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before the signal handlers were in place
        return 0
    except BrokenPipeError:
        # `tail | head`: the reader is gone. Point stdout at nothing so the interpreter's
        # final flush does not complain again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except (OSError, asyncpg.PostgresError) as exc:  # the database went away as we started
        print(f"server.py tail: cannot read the database: {exc}", file=sys.stderr)
        return 1
    return 0
