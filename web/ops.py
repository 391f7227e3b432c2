"""Operational endpoints: /healthz and /metrics (Prometheus text format, web/metrics.py)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from web.errors import RETRY_AFTER, error_body
from web.metrics import exposition


async def healthz(request: Request) -> Response:
    listener = request.state.listener
    try:
        # On the connection the pool keeps back: requests queued for the others (writes
        # waiting on a row lock, say) cannot make a reachable database look unreachable.
        await request.state.pool.ping(timeout=2)
        database = True
    except Exception:  # whatever the failure, the answer is "not reachable"
        database = False
    # Hearing events is not enough: after a gap they wait on a read of the change log, and
    # while that read keeps failing (the details are in the log, not here) none is delivered.
    log_readable = listener.catch_up_failure is None
    listening = listener.listening.is_set() and log_readable and listener.running
    body: dict[str, object] = {"status": "ok", "database": database, "listener": listening}
    if database and listening:
        return JSONResponse(body)
    # The one error shape too, so a client that reads only `error` understands it.
    why = ("the database is unreachable" if not database
           else "not receiving database events" if log_readable
           else "cannot read the change log, so events wait")
    body.update(status="unhealthy", **error_body("unavailable", f"{why}; retry shortly"))
    return JSONResponse(body, status_code=503, headers=RETRY_AFTER)


async def metrics(request: Request) -> Response:
    request.state.metrics.sync()  # this process's latest; the others sync every second
    body, content_type = exposition()
    return Response(body, media_type=content_type)


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
