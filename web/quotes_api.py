"""The JSON API over market data: current quotes (GET /api/quotes) and unrealised P&L."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from db import queries
from web.connections import reading
from web.errors import ApiError
from web.guard import api_user
from web.quotes import MAX_INSTRUMENTS, instrument_ok


def _symbols(request: Request) -> list[str] | None:
    """`instruments=A,B`: distinct names, sorted; absent means every instrument."""
    raw = request.query_params.get("instruments")
    if raw is None:
        return None
    names = sorted({name.strip() for name in raw.split(",")})
    bad = [n for n in names if not instrument_ok(n)]
    if bad:
        raise ApiError(400, "bad_request",
                       f"instruments must be comma-separated names of 1-64 characters,"
                       f" got {bad[0]!r}", {"instruments": f"{bad[0]!r} is not a name"})
    if len(names) > MAX_INSTRUMENTS:
        raise ApiError(400, "bad_request",
                       f"at most {MAX_INSTRUMENTS} instruments, got {len(names)}",
                       {"instruments": f"at most {MAX_INSTRUMENTS}"})
    return names


async def list_quotes(request: Request) -> Response:
    """Each instrument asked for, with its quote (null fields while it has none) and its
    version; names that are not instruments are listed under "unknown", not refused."""
    api_user(request)
    symbols = _symbols(request)
    async with reading(request) as db:
        items = [json.loads(item) for item in await queries.quotes_json(db, symbols)]
    known = {item["instrument"] for item in items}
    unknown = [s for s in symbols or () if s not in known]
    return JSONResponse({"items": items, "unknown": unknown})


async def pnl(request: Request) -> Response:
    """Unrealised P&L of all the user's filled and partially filled orders, at the last
    prices: `priced` orders have a last price, `unpriced` ones have none (not counted)."""
    user = api_user(request)
    async with reading(request) as db:
        total, priced, unpriced = await queries.unrealised_pnl(db, user.id)
    return JSONResponse({"total": total, "priced": priced, "unpriced": unpriced})


routes = [
    Route("/api/quotes", list_quotes, methods=["GET"]),
    Route("/api/pnl", pnl, methods=["GET"]),
]
