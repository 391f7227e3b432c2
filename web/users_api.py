"""Staff-only user management: list, create, read, make staff, reset password, revoke tokens."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from db import queries
from db.text import USERNAME, USERNAME_RULE, encodable
from web.connections import reading, writing
from web.errors import ApiError
from web.guard import api_user, path_id
from web.order_input import json_object
from web.routing import route

MIN_PASSWORD = 8
MAX_PASSWORD = 256


def _user_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "username": row["username"],
        "is_staff": row["is_staff"],
        "created_at": row["created_at"].isoformat().replace("+00:00", "Z"),
        "tokens": row["tokens"],
    }


def _password(value: Any, problems: dict[str, str]) -> str | None:
    if not isinstance(value, str) or not MIN_PASSWORD <= len(value) <= MAX_PASSWORD:
        problems["password"] = f"must be a string of {MIN_PASSWORD}-{MAX_PASSWORD} characters"
        return None
    if not encodable(value):  # a lone surrogate: JSON allows it, argon2 cannot hash it
        problems["password"] = "must be valid Unicode text"  # noqa: S105 (a message)
        return None
    return value


async def list_users(request: Request) -> Response:
    api_user(request, staff=True)
    async with reading(request) as db:
        rows = await queries.list_users(db)
    return JSONResponse({"items": [_user_json(r) for r in rows]})


async def create_user(request: Request) -> Response:
    api_user(request, staff=True)
    data = await json_object(request)
    problems: dict[str, str] = {}
    for key in data:
        if key not in ("username", "password", "is_staff"):
            problems[key] = "unknown field"
    username = data.get("username")
    if not isinstance(username, str) or not USERNAME.match(username):
        problems["username"] = USERNAME_RULE
    password = _password(data.get("password"), problems)
    is_staff = data.get("is_staff", False)
    if not isinstance(is_staff, bool):
        problems["is_staff"] = "must be true or false"
    if problems:
        raise ApiError(422, "invalid", "the user is not valid", problems)
    assert password is not None
    password_hash = await request.state.passwords.hash_async(password)
    async with writing(request) as db:
        row = await queries.create_user(db, username, password_hash, is_staff)
    return JSONResponse(_user_json(row), status_code=201,
                        headers={"Location": f"/api/users/{row['id']}"})


async def get_user(request: Request) -> Response:
    api_user(request, staff=True)
    user_id = path_id(request, "user_id", "user")
    async with reading(request) as db:
        row = await queries.get_user(db, user_id)
    if row is None:
        raise ApiError(404, "not_found", f"no user {user_id}")
    return JSONResponse(_user_json(row))


async def update_user(request: Request) -> Response:
    api_user(request, staff=True)
    user_id = path_id(request, "user_id", "user")
    data = await json_object(request)
    problems: dict[str, str] = {}
    for key in data:
        if key not in ("password", "is_staff"):
            problems[key] = "unknown field"
    is_staff = data.get("is_staff")
    if is_staff is not None and not isinstance(is_staff, bool):
        problems["is_staff"] = "must be true or false"
    password = _password(data["password"], problems) if "password" in data else None
    if problems:
        raise ApiError(422, "invalid", "the change is not valid", problems)
    password_hash = None if password is None else await request.state.passwords.hash_async(password)
    async with writing(request) as db:
        row = await queries.update_user(db, user_id, is_staff, password_hash)
    if row is None:
        raise ApiError(404, "not_found", f"no user {user_id}")
    return JSONResponse(_user_json(row))


async def revoke_tokens(request: Request) -> Response:
    api_user(request, staff=True)
    user_id = path_id(request, "user_id", "user")
    async with writing(request) as db:
        known = await queries.user_by_id(db, user_id) is not None
        revoked = await queries.revoke_tokens(db, user_id) if known else 0
    if not known:
        raise ApiError(404, "not_found", f"no user {user_id}")
    return JSONResponse({"revoked": revoked})


routes = [
    route("/api/users", get=list_users, post=create_user),
    route("/api/users/{user_id}", get=get_user, patch=update_user),
    route("/api/users/{user_id}/tokens", delete=revoke_tokens),
]
