"""Reading the order change log (order_changes): the slow lane of the stream.

A consumer that is behind (a resuming client, a listener after a gap, a session whose
queue filled up, a statement too big to announce row by row) reads what its position does
not cover, in pages bounded in rows and bytes, each in its own repeatable-read snapshot.
The reads run on connections of their own with `statement_timeout`, never on the API's
pool, so a blocked API cannot stall the stream and a slow read cannot stall the API.
"""

from __future__ import annotations

import asyncio
import logging
from typing import NamedTuple

import asyncpg

from db import queries
from db.change import Change, Page
from db.failures import DATABASE_ERRORS
from db.pool import CONNECT_TIMEOUT_S
from db.position import Position, Snapshot
from db.rights import Identities, Rights, load_rights

log = logging.getLogger(__name__)

_COLUMNS = "c.seq, c.xid AS x, c.xid::text::bigint AS xid, c.owner_id, c.old_owner_id, c.frame"


# One owner's changes are those it owns and those that moved away from it: each read for an
# owner is two reads, one per column, each an ordered range scan of its (column, xid, seq)
# index that stops at the page's limit. One query with "owner_id = $n OR old_owner_id = $n"
# over (column, xid) indexes did neither. Planned for the owner (custom plans, which the
# planner kept) it read and sorted all of the owner's changes in the transaction for every
# page: a 100,000-row statement replayed to its owner at 51,000 events/s, to staff at
# 150,000 (`bench --only replay`). Planned generically, it walked everyone's changes in
# (xid, seq) order and dropped the others'. The planner still picks the first kind of plan
# for the newest transactions when it can: hence no bitmap scans on the pool below.
def _for_owner(query: str, limit: str, owner: str) -> str:
    """`query` (with {scope} where its WHERE clauses end) for the owner in parameter `owner`:
    its rows as owner and as previous owner, in (xid, seq) order, at most `limit`. (The
    trigger never logs a previous owner equal to the owner; if a row did, it comes once.)"""
    scopes = (f" AND c.owner_id = {owner}",
              f" AND c.old_owner_id = {owner} AND c.owner_id <> {owner}")
    branches = " UNION ALL ".join(f"({query.format(scope=scope)})" for scope in scopes)
    return f"SELECT * FROM ({branches}) o ORDER BY x, seq LIMIT {limit}"


# What a position does not cover, in (xid, seq) order: transactions from xmax on, and the
# pending ranges below it; each branch an index range scan in (xid, seq) order that stops at
# the limit. The transaction under way is read by _REST_OF_CURRENT first, so it is left out.
# $1 xmax, $2/$3 pending lows/highs, $4 current xid or NULL, $5 rows.
_UNCOVERED = (
    f"(SELECT {_COLUMNS} FROM order_changes c WHERE c.xid >= $1::text::xid8{{scope}}"
    "  AND c.xid IS DISTINCT FROM $4::text::xid8 ORDER BY c.xid, c.seq LIMIT $5)"
    " UNION ALL"
    # LATERAL (a LIMIT keeps it so): each of the few pending ranges drives its own index scan.
    " (SELECT c.* FROM unnest($2::text[]::xid8[], $3::text[]::xid8[]) AS r(lo, hi),"
    f" LATERAL (SELECT {_COLUMNS} FROM order_changes c WHERE c.xid BETWEEN r.lo AND r.hi"
    "  {scope} AND c.xid IS DISTINCT FROM $4::text::xid8 ORDER BY c.xid, c.seq LIMIT $5) c"
    " ORDER BY c.x, c.seq LIMIT $5)"
)
# $1 xid, $2 after this seq, $3 rows; in the index's order: no sort, whatever the
# statistics say.
_REST_OF_CURRENT = (
    f"SELECT {_COLUMNS} FROM order_changes c WHERE c.xid = $1::text::xid8 AND c.seq > $2"
    "{scope} ORDER BY c.xid, c.seq LIMIT $3"
)


def _bounded(query: str, max_bytes: str) -> str:
    """`query`'s rows (already limited in number) while the frames before each one stay
    under `max_bytes` (a parameter, UTF-8 bytes): a page bounded in bytes without a round
    trip per row. The first row always comes. Each row tells its size and how many rows
    the query had before the byte bound (`total`): more than came means the page was cut."""
    return (
        "SELECT seq, xid, owner_id, old_owner_id, frame, bytes, total FROM ("
        " SELECT q.*, octet_length(q.frame) AS bytes, count(*) OVER () AS total,"
        "  sum(octet_length(q.frame)) OVER (ORDER BY q.x, q.seq"
        "  ROWS UNBOUNDED PRECEDING) - octet_length(q.frame) AS before"
        f" FROM ({query}) q) b WHERE b.before < {max_bytes} ORDER BY x, seq"
    )


# Pages bounded in bytes by the parameter after the rows' limit; for one owner, the owner
# is the parameter after that.
_PAGE_OF_CURRENT = _bounded(_REST_OF_CURRENT.format(scope=""), "$4")
_PAGE_OF_CURRENT_FOR_OWNER = _bounded(_for_owner(_REST_OF_CURRENT, "$3", "$5"), "$4")
_PAGE_OF_UNCOVERED = _bounded(
    f"SELECT * FROM ({_UNCOVERED.format(scope='')}) u ORDER BY x, seq LIMIT $5", "$6")
_PAGE_OF_UNCOVERED_FOR_OWNER = _bounded(_for_owner(_UNCOVERED, "$5", "$7"), "$6")
# The log's state in one snapshot. `alive`: the unlogged log survived since its horizon was
# last set; after a crash it is empty and proves nothing until a server recovers it.
_STATE = ("SELECT pg_current_snapshot()::text AS snapshot,"
          " pruned_xid::text::bigint AS pruned, truncated_xid::text::bigint AS truncated,"
          " generation, EXISTS (SELECT FROM order_changes_alive) AS alive"
          " FROM order_changes_horizon")


class LogState(NamedTuple):
    """What the log is now: a snapshot, its generation, and whether it is whole."""

    snapshot: Snapshot
    generation: int
    alive: bool

    def start(self) -> Position:
        """A position that takes everything committed before the snapshot as delivered:
        where a stream starts (or starts again), in the log's generation."""
        return Position(generation=self.generation).merge(self.snapshot)


class ChangeLog:
    """Reads of the change log on a small pool of its own."""

    def __init__(self, url: str, max_connections: int = 2,
                 statement_timeout_ms: int = 10_000, name: str = "orderstream-log") -> None:
        self._url = url
        self._max = max_connections
        self._timeout_ms = statement_timeout_ms
        self._name = name
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(
            self._url, min_size=1, max_size=self._max, timeout=CONNECT_TIMEOUT_S,
            server_settings={"application_name": self._name, "timezone": "UTC",
                             "statement_timeout": str(self._timeout_ms),
                             # A page must walk an index in (xid, seq) order and stop at its
                             # limit. The planner takes the newest transactions for few rows
                             # (statistics never know them) and would rather collect all of
                             # them in a bitmap and sort: every page then reads them all.
                             # The other queries on these connections look rows up by key
                             # (rights, the log's state, one frame); a long list of ids
                             # costs load_rights a few ms more without bitmaps. A query that
                             # needs the BRIN index (pruning) must not run here.
                             "enable_bitmapscan": "off"})

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the change log is not open")
        return self._pool

    async def state(self) -> LogState:
        row = await self.pool.fetchrow(_STATE)
        return LogState(Snapshot.parse(row["snapshot"]), row["generation"], row["alive"])

    async def recover(self) -> bool:
        """After a crash, a failover or a restore, PostgreSQL starts the (unlogged) change log
        empty: move its horizon past everything before and give it a new generation, so
        older positions expire, instead of reading an empty log as "nothing missed". True if
        this call did it; a no-op otherwise (one query)."""
        return bool(await self.pool.fetchval("SELECT orderstream_change_log_recover()"))

    async def truncated_xid(self) -> int:
        """The last transaction that ran TRUNCATE orders (0 if none did)."""
        value = await self.pool.fetchval(
            "SELECT truncated_xid::text::bigint FROM order_changes_horizon")
        return int(value or 0)

    async def frame(self, xid: int, seq: int) -> str | None:
        """The frame of one change (announced without it: too big for NOTIFY)."""
        return await self.pool.fetchval(
            "SELECT frame FROM order_changes WHERE xid = $1::text::xid8 AND seq = $2",
            str(xid), seq)

    async def rights(self, who: Identities) -> Rights:
        return await load_rights(self.pool, who)

    async def read(self, position: Position, owner_id: int | None = None,
                   who: Identities | None = None, max_rows: int = 1000,
                   max_bytes: int = 1 << 20) -> Page:
        """The next page of changes `position` does not cover, for one owner (also as the
        previous owner) or, with None, for all; and the rights of `who` read in the same
        snapshot, so no change is judged by rights older than it."""
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read",
                                                                 readonly=True):
            row = await conn.fetchrow(_STATE)
            snapshot = Snapshot.parse(row["snapshot"])
            generation = row["generation"]
            rights = await load_rights(conn, who) if who is not None else None
            if not row["alive"] or _expired(position, snapshot, row["pruned"], row["truncated"],
                                            generation):
                return Page([], snapshot, complete=True, expired=True, rights=rights,
                            generation=generation)
            changes: list[Change] = []
            current = position.current
            by_owner = () if owner_id is None else (owner_id,)
            if current is not None:
                rows = await conn.fetch(
                    _PAGE_OF_CURRENT if owner_id is None else _PAGE_OF_CURRENT_FOR_OWNER,
                    str(current[0]), current[1], max_rows, max_bytes, *by_owner)
                if _cut(rows, max_rows):
                    return Page(_changes(rows), snapshot, complete=False, rights=rights,
                                generation=generation)
                changes = _changes(rows)
                max_rows -= len(rows)
                max_bytes -= sum(r["bytes"] for r in rows)
            pending, xmax = position.uncovered()
            rows = await conn.fetch(
                _PAGE_OF_UNCOVERED if owner_id is None else _PAGE_OF_UNCOVERED_FOR_OWNER,
                str(xmax), [str(a) for a, _ in pending], [str(b) for _, b in pending],
                None if current is None else str(current[0]), max(max_rows, 1),
                max(max_bytes, 1), *by_owner)
            changes += _changes(rows)
            return Page(changes, snapshot, complete=not _cut(rows, max(max_rows, 1)),
                        rights=rights, generation=generation)

    async def read_transaction(self, xid: int, after_seq: int, max_rows: int = 1000,
                               max_bytes: int = 1 << 20) -> tuple[list[Change], bool]:
        """The changes of one committed transaction after `after_seq`, in seq order (a
        statement announced in bulk); and whether that was all of them."""
        rows = await self.pool.fetch(_PAGE_OF_CURRENT, str(xid), after_seq, max_rows, max_bytes)
        return _changes(rows), not _cut(rows, max_rows)


def _changes(rows: list[asyncpg.Record]) -> list[Change]:
    # By position (seq, xid, owner_id, old_owner_id, frame): cheaper than by name.
    return [Change(r[0], r[1], r[2], r[3], r[4]) for r in rows]


def _cut(rows: list[asyncpg.Record], max_rows: int) -> bool:
    """Whether a page stopped at its bounds (more may follow) rather than at the end."""
    return bool(rows) and (rows[0]["total"] > len(rows) or len(rows) >= max_rows)


def _expired(position: Position, snapshot: Snapshot, pruned: int, truncated: int,
             generation: int) -> bool:
    """Whether the log no longer covers what `position` has not seen."""
    if position.generation != generation:
        # From before a loss of the log (or another database): its xids may be ones this
        # database hands out again to other transactions, however they compare with ours.
        # Generations are random: none is "higher", and a cursor from the future (below)
        # gets the same answer.
        return True
    current = position.current
    if position.xmax > snapshot.xmax or (current is not None and current[0] >= snapshot.xmax):
        # Transactions this database has not even started: a cursor from another database
        # (restored, re-created at the same address). Whatever it saw, we cannot replay.
        return True
    if truncated and not position.finished(truncated):
        return True  # TRUNCATE orders: the log cannot say what vanished
    if not pruned:
        return False
    if position.xmax <= pruned:
        return True
    running = set(snapshot.xip)
    for low, high in position.uncovered()[0]:
        if low > pruned:
            break
        # Pruned rows belong to finished transactions: one still running lost nothing.
        top = min(high, pruned)
        if top - low + 1 > sum(1 for x in running if low <= x <= top):
            return True
    return False


# Seconds a prune's DELETE may run (it runs without statement_timeout).
PRUNE_TIMEOUT_S = 3600.0


async def prune(pool: asyncpg.Pool, older_than_seconds: float) -> int:
    """Delete change-log rows past retention (one process at a time); returns how many."""
    async with pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock(7363, 1)"):
            return 0
        # A big prune may take longer than the API's timeouts on this connection allow
        # (the server's, and the pool's client-side command_timeout).
        await conn.execute("SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0")
        row = await conn.fetchrow(
            "WITH gone AS (DELETE FROM order_changes"
            "  WHERE created_at < now() - make_interval(secs => $1) RETURNING xid)"
            " SELECT count(*) AS n, max(xid)::text AS newest FROM gone", older_than_seconds,
            timeout=PRUNE_TIMEOUT_S)
        if row["n"]:
            await conn.execute(
                "UPDATE order_changes_horizon"
                " SET pruned_xid = greatest(pruned_xid, $1::text::xid8)",
                row["newest"])
        return row["n"]


async def upkeep(pool: asyncpg.Pool, retention_seconds: float, web_session_seconds: float,
                 every_seconds: float = 60.0) -> None:
    """Keep the change log within its retention window (and expired browser sessions out),
    for as long as the server runs."""
    while True:
        try:
            pruned = await prune(pool, retention_seconds)
            if pruned:
                log.info("pruned %d change-log rows", pruned)
            await queries.prune_web_sessions(pool, web_session_seconds)
        except DATABASE_ERRORS as exc:
            log.warning("pruning the change log failed: %s", exc)
        except Exception:
            # A bug: still try again next time, or the log would grow without bound.
            log.exception("pruning the change log failed")
        await asyncio.sleep(every_seconds)
