"""A user's own API tokens over HTTP: create (the secret shown once), list, read, revoke.

Session (with X-CSRF-Token) or token authentication both work: a token already carries
all of its user's rights, so letting it make or revoke that user's tokens adds none.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from db import tokens
from web.connections import reading, writing
from web.errors import ApiError
from web.guard import api_user, path_id
from web.order_input import json_object
from web.routing import route


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def token_json(row: dict[str, Any]) -> dict[str, Any]:
    """A token as the API shows it: never the secret, never its hash."""
    return {"id": row["id"], "name": row["name"], "created_at": _time(row["created_at"]),
            "last_used_at": _time(row["last_used_at"])}


def _name(data: dict[str, Any]) -> str:
    problems = {key: "unknown field" for key in data if key != "name"}
    name = data.get("name")
    problem = tokens.name_problem(name)
    if problem:
        problems["name"] = problem
    if problems:
        raise ApiError(422, "invalid", "the token is not valid", problems)
    assert isinstance(name, str)
    return name.strip()


async def create_token(request: Request) -> Response:
    user = api_user(request)
    name = _name(await json_object(request))
    async with writing(request) as db:
        created = await tokens.create_token(db, user.id, name)
    if created is None:
        raise ApiError(409, "too_many_tokens",
                       f"at most {tokens.MAX_TOKENS_PER_USER} active tokens per user;"
                       " revoke one first")
    row, secret = created
    location = f"/api/tokens/{row['id']}"
    # The secret is in this response only: no cache may keep it.
    return JSONResponse({**token_json(row), "token": secret}, status_code=201,
                        headers={"Location": location, "Cache-Control": "no-store"})


async def list_tokens(request: Request) -> Response:
    user = api_user(request)
    async with reading(request) as db:
        rows = await tokens.list_tokens(db, user.id)
    return JSONResponse({"items": [token_json(r) for r in rows]})


async def get_token(request: Request) -> Response:
    user = api_user(request)
    token_id = path_id(request, "token_id", "token")
    async with reading(request) as db:
        row = await tokens.get_token(db, user.id, token_id)
    if row is None:
        raise ApiError(404, "not_found", f"no token {token_id}")
    return JSONResponse(token_json(row))


async def revoke_token(request: Request) -> Response:
    """Revoke one of the caller's tokens (the one in use too): its sockets close with 1008
    in every server process, and it answers 401 from then on."""
    user = api_user(request)
    token_id = path_id(request, "token_id", "token")
    async with writing(request) as db:
        revoked = await tokens.revoke_token(db, user.id, token_id)
    if not revoked:
        raise ApiError(404, "not_found", f"no token {token_id}")
    return Response(status_code=204)


routes = [
    route("/api/tokens", get=list_tokens, post=create_token),
    route("/api/tokens/{token_id}", get=get_token, delete=revoke_token),
]
