"""Tell "the database cannot be reached" apart from "the database refused this query"."""

from __future__ import annotations

import asyncpg

# What a lost, refused or dying connection makes asyncpg raise besides PostgresError:
# OSError for a refused or reset socket (TimeoutError, and so PoolBusy, are OSErrors too),
# InterfaceError for "connection is closed", InternalClientError when the backend's last
# message arrived but its close had not yet ("another operation is in progress").
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError, asyncpg.InterfaceError, asyncpg.InternalClientError)

# What any query can raise that is the database's doing (refused, failed or cut off), not a
# bug of ours: a loop that must outlive the database's bad moments catches exactly these.
DATABASE_ERRORS: tuple[type[BaseException], ...] = (asyncpg.PostgresError, *CONNECTION_ERRORS)

# SQLSTATE classes that mean the server, not the query, is the problem: 08 connection
# exception, 53 insufficient resources (too many connections), 57P operator intervention
# (terminated backend, shutdown, "the database system is starting up").
_UNAVAILABLE_STATES = ("08", "53", "57P")


def recurring(exc: BaseException) -> bool:
    """True unless `exc` is a database error worth retrying: one that is not the database's
    (a bug), or one the same query would meet again (22: bad data; 42: a broken or
    forbidden query). A timeout, a deadlock or an unreachable database pass."""
    if not isinstance(exc, DATABASE_ERRORS):
        return True
    state = getattr(exc, "sqlstate", None) or ""
    return state.startswith(("22", "42"))


def unreachable(exc: BaseException) -> bool:
    """True when `exc` says the database could not be reached or dropped the connection:
    worth retrying later, whatever the request was."""
    if isinstance(exc, CONNECTION_ERRORS):
        return True
    if not isinstance(exc, asyncpg.PostgresError):
        return False
    state = getattr(exc, "sqlstate", None) or ""
    if state.startswith(_UNAVAILABLE_STATES):
        return True
    # 55000 at connect: `ALTER DATABASE ... ALLOW_CONNECTIONS false` (or a template).
    return state == "55000" and "accepting connections" in str(exc)
