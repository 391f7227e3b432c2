"""The asyncpg connection pool the web app queries through."""

from __future__ import annotations

import asyncpg


async def create_pool(url: str, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    """A pool whose connections run in UTC, so timestamps render the same everywhere."""
    pool = await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        server_settings={"timezone": "UTC", "application_name": "orderstream"},
    )
    assert pool is not None
    return pool
