"""Prometheus metrics: the hub's and the listener's counters, trigger-to-send latency, and the
process metrics, exposed through prometheus-client (multiprocess mode under `--workers`)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from web.frames import event_ts

if TYPE_CHECKING:
    from db.listener import Listener
    from web.hub import Hub

# Set by `serve --workers N` before the workers start (prometheus-client reads it when
# metrics are created): every worker then writes its values to files there, and a scrape of
# any worker adds them all up.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

log = logging.getLogger(__name__)

_COUNTERS = {
    "events_received": ("orderstream_events_received",
                        "Order events received from the database."),
    "quotes_received": ("orderstream_quotes_received",
                        "Quote events received from the database."),
    "frames_sent": ("orderstream_frames_sent", "Frames written to WebSockets."),
    "quotes_dropped": ("orderstream_quotes_dropped",
                       "Quotes replaced by a newer one of the same instrument before a session's"
                       " socket took them (conflation)."),
    "catch_ups": ("orderstream_catch_ups",
                  "Times a session fell behind the live stream (or resumed) and read the log."),
    "log_reads": ("orderstream_catch_up_reads",
                  "Pages of the change log read for sessions behind the live stream."),
    "resyncs_sent": ("orderstream_resyncs_sent", "Resync frames queued to sessions."),
    "reconnects": ("orderstream_listener_reconnects",
                   "Times the LISTEN connection was re-established."),
    "dropped": ("orderstream_listener_dropped",
                "Notifications dropped by an overflowing listener queue (then read from the log)."),
    "replays": ("orderstream_listener_replays",
                "Times the listener read the change log after a gap."),
    "rejected": ("orderstream_notifications_rejected",
                 "Notifications on a signed channel without the triggers' signature (ignored)."),
    "forged": ("orderstream_forged_notifications",
               "Times a notification no writer sent moved the stream's position (then reset,"
               " with resync)."),
}
_LISTENER_COUNTERS = ("reconnects", "dropped", "replays", "rejected", "forged")

COUNTERS = {key: Counter(name, text) for key, (name, text) in _COUNTERS.items()}
SESSIONS = Gauge("orderstream_sessions", "Connected WebSocket sessions.",
                 multiprocess_mode="livesum")
LISTENING = Gauge("orderstream_listener_up",
                  "Server processes whose LISTEN connection is listening.",
                  multiprocess_mode="livesum")
# Seconds from the trigger's clock_timestamp() to the frame's write on a socket, sampled
# (see DeliverySampler); the database's clock and the server's must agree for it to mean much.
DELIVERY = Histogram(
    "orderstream_delivery_seconds",
    "Trigger-to-send latency of order events, sampled at most every 10 ms per process.",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

# Observed by web/collector.py's GcTimer, which says why these pauses matter.
GC_PAUSES = Histogram(
    "orderstream_gc_pause_seconds",
    "Passes of the garbage collector, which stop every socket of the process while they run,"
    " by generation (2: a full pass over every object).",
    ["generation"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


# The answers that turn a request away, by status: 413 (body too large), 429 (throttled),
# 503 (database or pool unavailable; a refused /ws handshake too).
REFUSALS = Counter("orderstream_http_refusals",
                   "Requests turned away: 413 body too large, 429 throttled, 503 unavailable.",
                   ["status"])
_REFUSED = frozenset({413, 429, 503})
_RESPONSE_STARTS = frozenset({"http.response.start", "websocket.http.response.start"})


class CountRefusals:
    """ASGI middleware: counts the 413, 429 and 503 answers, whichever layer gave them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return

        async def counting(message: Message) -> None:
            if message["type"] in _RESPONSE_STARTS and message.get("status") in _REFUSED:
                REFUSALS.labels(str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting)


class DeliverySampler:
    """Observes the trigger-to-send latency of a frame now and then: parsing every frame's
    `ts` would cost the send path more than the metric is worth."""

    INTERVAL = 0.01  # seconds between samples, per process

    def __init__(self) -> None:
        self._next = 0.0

    def sample(self, frame: str) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        ts_ms = event_ts(frame)
        if ts_ms is None:
            return
        self._next = now + self.INTERVAL
        DELIVERY.observe(max(0.0, time.time() - ts_ms / 1000))


SAMPLER = DeliverySampler()


class CounterSync:
    """Carries the hub's and the listener's plain-int counters into prometheus-client.
    They stay plain ints on the hot paths (an `inc()` per frame costs a lock, and a file
    write in multiprocess mode); this adds what changed since the last sync."""

    def __init__(self, read: Callable[[], dict[str, int]], sessions: Callable[[], int],
                 listening: Callable[[], bool],
                 also: Callable[[], None] = lambda: None) -> None:
        self._read = read
        self._sessions = sessions
        self._listening = listening
        self._also = also  # more to carry over on each sync (web/collector.py)
        self._last: dict[str, int] = {}

    def sync(self) -> None:
        for key, value in self._read().items():
            delta = value - self._last.get(key, 0)
            if delta > 0:
                COUNTERS[key].inc(delta)
            self._last[key] = value
        SESSIONS.set(self._sessions())
        LISTENING.set(1 if self._listening() else 0)
        self._also()

    async def run(self, interval: float = 1.0) -> None:
        while True:
            try:
                self.sync()
            except Exception:  # a bug: /metrics goes stale, but the next sync may work
                log.exception("syncing the metrics failed")
            await asyncio.sleep(interval)


def counter_sync(hub: Hub, listener: Listener,
                 also: Callable[[], None] = lambda: None) -> CounterSync:
    """A CounterSync for this process's hub and listener (and `also`, called each sync)."""
    counters = hub.counters

    def read() -> dict[str, int]:
        values = {key: getattr(counters, key) for key in _COUNTERS
                  if key not in _LISTENER_COUNTERS}
        values.update({key: getattr(listener, key) for key in _LISTENER_COUNTERS})
        return values

    return CounterSync(read, lambda: len(hub.subscribers), listener.listening.is_set, also)


def exposition() -> tuple[bytes, str]:
    """The text exposition of every process's metrics (the body and its content type)."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        # Process metrics cannot be added up across processes: these are the scraped one's.
        ProcessCollector(registry=registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def mark_process_dead(pid: int) -> None:
    """Drops a finished worker's live gauges (prometheus-client's multiprocess cleanup)."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)
