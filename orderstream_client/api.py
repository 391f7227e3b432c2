"""The JSON API calls the client makes: every order a subscription covers, page by page."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

# Orders per request (the server's max_page_size defaults to 1000).
PAGE_SIZE = 500
# 503 (busy, timeout) and 429 are worth retrying: this many times, waiting Retry-After.
RETRIES = 5
RETRY_AFTER_CAP = 5.0  # seconds


class ApiError(Exception):
    """The server answered with an error: `status`, and `code`/`message` from its JSON."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def _error(response: httpx.Response) -> ApiError:
    try:
        error = response.json()["error"]
        return ApiError(response.status_code, str(error["code"]), str(error["message"]))
    except (ValueError, KeyError, TypeError):
        return ApiError(response.status_code, "http_error", response.text[:200])


async def get_json(client: httpx.AsyncClient, path: str,
                   params: dict[str, str | int]) -> dict[str, Any]:
    """GET `path` as JSON, retrying answers the server marks as worth retrying."""
    for attempt in range(RETRIES + 1):
        response = await client.get(path, params=params)
        if response.status_code == 200:
            body: dict[str, Any] = response.json()
            return body
        if response.status_code not in (429, 503) or attempt == RETRIES:
            raise _error(response)
        try:
            wait = float(response.headers.get("retry-after", "1"))
        except ValueError:
            wait = 1.0
        await asyncio.sleep(min(max(wait, 0.0), RETRY_AFTER_CAP))
    raise AssertionError("unreachable")


async def fetch_orders(base_url: str, token: str, owner: int | str | None = None,
                       page_size: int = PAGE_SIZE) -> list[dict[str, Any]]:
    """Every order of `owner` (a user id, "*" for everyone, None for the token's user as
    the API decides) from `GET /api/orders`, by ascending id.

    Pages are read by offset while others write. An insert only pushes rows later (read
    twice, which the version rule absorbs), but a delete before the read point would make
    the next page skip a row. Each page therefore overlaps the previous one by a row, and
    if it starts past the last id read (or is empty), rows went away in between: step back
    a page.
    """
    if page_size < 2:
        raise ValueError(f"page_size must be at least 2 (pages overlap by one), got {page_size}")
    params: dict[str, str | int] = {"sort": "id", "limit": page_size}
    if owner is not None:
        params["owner"] = owner
    orders: dict[int, dict[str, Any]] = {}
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as client:
        offset, last_id = 0, None
        while True:
            items = (await get_json(client, "/api/orders", {**params, "offset": offset}))["items"]
            # A page after the first always holds at least the row it overlaps, unless
            # rows before it went away.
            if offset > 0 and (not items or int(items[0]["id"]) > (last_id or 0)):
                offset = max(0, offset - page_size)
                continue
            for item in items:
                held = orders.get(int(item["id"]))
                if held is None or int(held["version"]) < int(item["version"]):
                    orders[int(item["id"])] = item
            if len(items) < page_size:
                return list(orders.values())
            last_id = int(items[-1]["id"])
            offset += page_size - 1
