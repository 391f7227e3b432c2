"""Operational endpoints: /healthz and /metrics (Prometheus text format)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route


async def healthz(request: Request) -> Response:
    listener = request.state.listener
    try:
        # On the connection the pool keeps back: requests queued for the others (writes
        # waiting on a row lock, say) cannot make a reachable database look unreachable.
        await request.state.pool.ping(timeout=2)
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
            len(hub.subscribers))
    _metric(lines, "orderstream_events_received_total", "counter",
            "Order events received from the database.", counters.events_received)
    _metric(lines, "orderstream_quotes_received_total", "counter",
            "Quote events received from the database.", counters.quotes_received)
    _metric(lines, "orderstream_frames_sent_total", "counter",
            "Frames written to WebSockets.", counters.frames_sent)
    _metric(lines, "orderstream_quotes_dropped_total", "counter",
            "Quote frames dropped for sessions whose queue was full.", counters.quotes_dropped)
    _metric(lines, "orderstream_catch_ups_total", "counter",
            "Times a session fell behind the live stream (or resumed) and read the change log.",
            counters.catch_ups)
    _metric(lines, "orderstream_catch_up_reads_total", "counter",
            "Pages of the change log read for sessions behind the live stream.",
            counters.log_reads)
    _metric(lines, "orderstream_resyncs_sent_total", "counter",
            "Resync frames queued to sessions.", counters.resyncs_sent)
    _metric(lines, "orderstream_listener_up", "gauge",
            "1 while the LISTEN connection is listening.", int(listener.listening.is_set()))
    _metric(lines, "orderstream_listener_reconnects_total", "counter",
            "Times the LISTEN connection was re-established.", listener.reconnects)
    _metric(lines, "orderstream_listener_dropped_total", "counter",
            "Notifications dropped by an overflowing listener queue (then read from the log).",
            listener.dropped)
    _metric(lines, "orderstream_listener_replays_total", "counter",
            "Times the listener read the change log after a gap.", listener.replays)
    _metric(lines, "orderstream_forged_notifications_total", "counter",
            "Times a notification no writer sent moved the stream's position (then reset,"
            " with resync).", listener.forged)
    return PlainTextResponse("\n".join(lines) + "\n",
                             media_type="text/plain; version=0.0.4; charset=utf-8")


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
