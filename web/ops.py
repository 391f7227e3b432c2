"""Operational endpoints: /healthz and /metrics (Prometheus text format)."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route


async def healthz(request: Request) -> Response:
    listener = request.state.listener
    try:
        await asyncio.wait_for(request.state.pool.fetchval("SELECT 1"), 2)
        database = True
    except Exception:  # whatever the failure, the answer is "not reachable"
        database = False
    listening = listener.listening.is_set()
    ok = database and listening
    return JSONResponse(
        {"status": "ok" if ok else "unhealthy", "database": database, "listener": listening},
        status_code=200 if ok else 503,
    )


def _metric(lines: list[str], name: str, kind: str, help_text: str, value: float) -> None:
    lines.append(f"# HELP {name} {help_text}")
    lines.append(f"# TYPE {name} {kind}")
    lines.append(f"{name} {value}")


async def metrics(request: Request) -> Response:
    hub = request.state.hub
    counters = hub.counters
    listener = request.state.listener
    lines: list[str] = []
    _metric(lines, "orderstream_sessions", "gauge", "Connected WebSocket sessions.",
            len(hub.sessions))
    _metric(lines, "orderstream_events_received_total", "counter",
            "Order events received from the database.", counters.events_received)
    _metric(lines, "orderstream_quotes_received_total", "counter",
            "Quote events received from the database.", counters.quotes_received)
    _metric(lines, "orderstream_frames_sent_total", "counter",
            "Frames written to WebSockets.", counters.frames_sent)
    _metric(lines, "orderstream_frames_dropped_total", "counter",
            "Frames dropped from overflowing session queues.", counters.frames_dropped)
    _metric(lines, "orderstream_resyncs_sent_total", "counter",
            "Resync frames queued to sessions.", counters.resyncs_sent)
    _metric(lines, "orderstream_listener_up", "gauge",
            "1 while the LISTEN connection is listening.", int(listener.listening.is_set()))
    _metric(lines, "orderstream_listener_reconnects_total", "counter",
            "Times the LISTEN connection was re-established.", listener.reconnects)
    _metric(lines, "orderstream_listener_dropped_total", "counter",
            "Notifications dropped by an overflowing listener queue (then replayed).",
            listener.dropped)
    _metric(lines, "orderstream_listener_replays_total", "counter",
            "Gaps in notifications filled from the change log.", listener.replays)
    _metric(lines, "orderstream_stream_anomalies_total", "counter",
            "Events that arrived behind the watermark (each sent every session resync).",
            listener.anomalies)
    return PlainTextResponse("\n".join(lines) + "\n",
                             media_type="text/plain; version=0.0.4; charset=utf-8")


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
