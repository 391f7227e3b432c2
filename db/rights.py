"""Who the open sockets are, and what the database says they may read: plain data shared
by the queries that load it and the hub that applies it."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True)
class Identities:
    """The users, API tokens and browser sessions behind a set of sockets."""

    users: set[int]
    tokens: set[int]
    web_sessions: set[str]


@dataclass(frozen=True)
class Rights:
    """What the database says about some identities: staff flag of each user that still
    exists, and which of the tokens and browser sessions are still valid."""

    staff: dict[int, bool]
    tokens: set[int]
    web_sessions: set[str]


async def load_rights(db: asyncpg.Pool | asyncpg.Connection, who: Identities) -> Rights:
    """Which of these users still exist (and their staff flag), and which of these tokens
    and browser sessions are still valid."""
    users = await db.fetch("SELECT id, is_staff FROM users WHERE id = ANY($1::bigint[])",
                           list(who.users))
    tokens = await db.fetch("SELECT id FROM api_tokens WHERE id = ANY($1::bigint[])"
                            " AND revoked_at IS NULL", list(who.tokens))
    sids = await db.fetch("SELECT sid FROM web_sessions WHERE sid = ANY($1::text[])",
                          list(who.web_sessions))
    return Rights(staff={r["id"]: r["is_staff"] for r in users},
                  tokens={r["id"] for r in tokens}, web_sessions={r["sid"] for r in sids})
