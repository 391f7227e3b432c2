"""Who the open sockets are, and what the database says they may read: plain data shared
by the queries that load it and the hub that applies it."""

from __future__ import annotations

from dataclasses import dataclass


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
