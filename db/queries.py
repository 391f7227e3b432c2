"""All SQL the web app runs, as functions over an asyncpg connection or pool.

Values are always $n parameters. The only SQL assembled at run time is made of
fixed fragments chosen from the allow-lists below (sort columns, search
columns), never of input text.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

import asyncpg

Executor = asyncpg.Pool | asyncpg.Connection

# PostgreSQL's largest bigint: an id or version past it is refused before any query.
MAX_BIGINT = 2**63 - 1

# Public column name -> SQL expression. The only way input picks SQL.
SORT_COLUMNS: dict[str, str] = {
    "id": "o.id",
    "owner_id": "o.owner_id",
    "owner": "u.username",
    "instrument": "o.instrument",
    "side": "o.side",
    "quantity": "o.quantity",
    "price": "o.price",
    "status": "o.status",
    "version": "o.version",
    "created_at": "o.created_at",
    "updated_at": "o.updated_at",
}
# Columns a free-text search word may match (as text, case-insensitive substring).
SEARCH_COLUMNS: dict[str, str] = {
    "id": "o.id::text",
    "owner": "u.username",
    "instrument": "o.instrument",
    "side": "o.side",
    "status": "o.status",
    "quantity": "o.quantity::text",
    "price": "o.price::text",
}
# Columns a list may be filtered on by exact value (status=, side=, instrument=).
EXACT_COLUMNS: dict[str, str] = {
    "status": "o.status",
    "side": "o.side",
    "instrument": "o.instrument",
}
# Columns a PATCH/POST may set -> SQL column name.
WRITABLE_COLUMNS: dict[str, str] = {
    "owner_id": "owner_id",
    "instrument": "instrument",
    "side": "side",
    "quantity": "quantity",
    "price": "price",
    "status": "status",
    "note": "note",
}

_ORDER_JSON = "orderstream_order_json(o, u.username)::text"
_FROM = "FROM orders o JOIN users u ON u.id = o.owner_id"


@dataclass(frozen=True)
class User:
    id: int
    username: str
    is_staff: bool
    token_id: int | None = None  # set when the user authenticated with an API token


@dataclass(frozen=True)
class OrderQuery:
    """A validated list request. `owner_id` None means every owner (staff only)."""

    owner_id: int | None
    limit: int
    offset: int
    sort: tuple[tuple[str, bool], ...] = (("id", True),)  # (column, descending)
    words: tuple[str, ...] = ()
    search_columns: tuple[str, ...] = tuple(SEARCH_COLUMNS)
    column_filters: tuple[tuple[str, str], ...] = ()
    equals: tuple[tuple[str, str], ...] = ()  # (EXACT_COLUMNS key, value): exact matches


@dataclass(frozen=True)
class OrderPage:
    items_json: list[str]
    total: int
    filtered: int
    seq: int


def _like(word: str) -> str:
    escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


# -- users and tokens ---------------------------------------------------------


def _user(row: asyncpg.Record | None) -> User | None:
    return None if row is None else User(row["id"], row["username"], row["is_staff"])


async def user_by_id(db: Executor, user_id: int) -> User | None:
    row = await db.fetchrow("SELECT id, username, is_staff FROM users WHERE id = $1", user_id)
    return _user(row)


async def user_by_name(db: Executor, username: str) -> User | None:
    row = await db.fetchrow("SELECT id, username, is_staff FROM users WHERE username = $1",
                            username)
    return _user(row)


async def user_with_hash(db: Executor, username: str) -> tuple[User, str | None] | None:
    row = await db.fetchrow(
        "SELECT id, username, is_staff, password_hash FROM users WHERE username = $1", username
    )
    if row is None:
        return None
    user = _user(row)
    assert user is not None
    return user, row["password_hash"]


async def user_by_token(db: Executor, token: str) -> User | None:
    # last_used_at is written at most once a minute: a busy program must not turn every
    # request into a write.
    row = await db.fetchrow(
        "WITH t AS (SELECT id, user_id, last_used_at FROM api_tokens"
        "  WHERE token_hash = $1 AND revoked_at IS NULL),"
        " touched AS (UPDATE api_tokens SET last_used_at = now() FROM t"
        "  WHERE api_tokens.id = t.id"
        "  AND (t.last_used_at IS NULL OR t.last_used_at < now() - interval '1 minute'))"
        " SELECT u.id, u.username, u.is_staff, t.id AS token_id FROM t"
        " JOIN users u ON u.id = t.user_id",
        token_hash(token),
    )
    return None if row is None else User(row["id"], row["username"], row["is_staff"],
                                         row["token_id"])


async def user_by_session(db: Executor, sid: str, user_id: int) -> User | None:
    row = await db.fetchrow(
        "SELECT u.id, u.username, u.is_staff FROM web_sessions s JOIN users u"
        " ON u.id = s.user_id WHERE s.sid = $1 AND s.user_id = $2", sid, user_id)
    return _user(row)


async def start_web_session(db: Executor, user_id: int) -> str:
    sid = secrets.token_urlsafe(32)
    await db.execute("INSERT INTO web_sessions (sid, user_id) VALUES ($1, $2)", sid, user_id)
    return sid


async def end_web_session(db: Executor, sid: str) -> None:
    await db.execute("DELETE FROM web_sessions WHERE sid = $1", sid)


async def prune_web_sessions(db: Executor, older_than_seconds: float) -> int:
    status = await db.execute(
        "DELETE FROM web_sessions WHERE created_at < now() - make_interval(secs => $1)",
        older_than_seconds)
    return int(status.split()[-1])


async def list_users(db: Executor) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT u.id, u.username, u.is_staff, u.created_at,"
        " (SELECT count(*) FROM api_tokens t WHERE t.user_id = u.id AND t.revoked_at IS NULL)"
        " AS tokens FROM users u ORDER BY u.id"
    )
    return [dict(row) for row in rows]


async def get_user(db: Executor, user_id: int) -> dict[str, Any] | None:
    row = await db.fetchrow(
        "SELECT u.id, u.username, u.is_staff, u.created_at,"
        " (SELECT count(*) FROM api_tokens t WHERE t.user_id = u.id AND t.revoked_at IS NULL)"
        " AS tokens FROM users u WHERE u.id = $1", user_id)
    return None if row is None else dict(row)


async def create_user(db: Executor, username: str, password_hash: str | None,
                      is_staff: bool) -> dict[str, Any]:
    row = await db.fetchrow(
        "INSERT INTO users (username, password_hash, is_staff) VALUES ($1, $2, $3)"
        " RETURNING id, username, is_staff, created_at, 0::bigint AS tokens",
        username, password_hash, is_staff,
    )
    return dict(row)


async def update_user(db: Executor, user_id: int, is_staff: bool | None,
                      password_hash: str | None) -> dict[str, Any] | None:
    row = await db.fetchrow(
        "UPDATE users SET is_staff = coalesce($2, is_staff),"
        " password_hash = coalesce($3, password_hash) WHERE id = $1"
        " RETURNING id, username, is_staff, created_at,"
        " (SELECT count(*) FROM api_tokens t WHERE t.user_id = users.id AND t.revoked_at IS NULL)"
        " AS tokens",
        user_id, is_staff, password_hash,
    )
    return None if row is None else dict(row)


async def revoke_tokens(db: Executor, user_id: int) -> int:
    status = await db.execute(
        "UPDATE api_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL",
        user_id,
    )
    return int(status.split()[-1])


# -- orders -------------------------------------------------------------------


async def list_orders(db: Executor, query: OrderQuery) -> OrderPage:
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    scope = "TRUE" if query.owner_id is None else f"o.owner_id = {arg(query.owner_id)}"
    filters: list[str] = []
    for word in query.words:
        if not query.search_columns:
            # No column to match: nothing does. (An unused $n would leave its type unknown.)
            filters.append("FALSE")
            continue
        placeholder = arg(_like(word))
        alternatives = [f"{SEARCH_COLUMNS[c]} ILIKE {placeholder}" for c in query.search_columns]
        filters.append("(" + " OR ".join(alternatives) + ")")
    for column, value in query.column_filters:
        filters.append(f"{SEARCH_COLUMNS[column]} ILIKE {arg(_like(value))}")
    for column, value in query.equals:
        filters.append(f"{EXACT_COLUMNS[column]} = {arg(value)}")
    where_filtered = " AND ".join([scope, *filters])
    order_by = ", ".join(
        f"{SORT_COLUMNS[column]} {'DESC' if descending else 'ASC'}"
        for column, descending in query.sort
    )
    # A unique tiebreaker keeps pages stable when sort values repeat.
    order_by += ", o.id DESC" if query.sort[-1] != ("id", False) else ""
    limit, offset = arg(query.limit), arg(query.offset)
    # Without a search the filtered count is the total: count once, and without the join.
    filtered = f"(SELECT count(*) {_FROM} WHERE {where_filtered})" if filters else "NULL"
    sql = (
        f"SELECT (SELECT count(*) FROM orders o WHERE {scope}) AS total,"
        f" {filtered} AS filtered,"
        f" (SELECT coalesce(array_agg(j), '{{}}') FROM (SELECT {_ORDER_JSON} AS j {_FROM}"
        f"  WHERE {where_filtered} ORDER BY {order_by} LIMIT {limit} OFFSET {offset}) page)"
        " AS items,"
        " (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM order_event_seq) AS seq"
    )
    row = await db.fetchrow(sql, *args)
    total = row["total"]
    return OrderPage(list(row["items"]), total,
                     total if row["filtered"] is None else row["filtered"], row["seq"])


async def get_order(db: Executor, order_id: int, owner_id: int | None
                    ) -> tuple[str, int] | None:
    """The order's JSON and its version (the ETag), if the owner (None: anyone's) has it."""
    row = await db.fetchrow(
        f"SELECT {_ORDER_JSON} AS order_json, o.version {_FROM}"
        " WHERE o.id = $1 AND ($2::bigint IS NULL OR o.owner_id = $2)",
        order_id, owner_id,
    )
    return None if row is None else (row["order_json"], row["version"])


_RETURNING = (
    "RETURNING orderstream_order_json(orders,"
    " (SELECT username FROM users WHERE id = orders.owner_id))::text AS order_json, version"
)


async def create_order(db: Executor, values: dict[str, Any]) -> tuple[int, str, int]:
    """Insert an order: (its id, its JSON, its version)."""
    columns = [WRITABLE_COLUMNS[name] for name in values]
    placeholders = [f"${i}" for i in range(1, len(values) + 1)]
    row = await db.fetchrow(
        f"INSERT INTO orders ({', '.join(columns)}) VALUES ({', '.join(placeholders)})"
        f" {_RETURNING}, id",
        *values.values(),
    )
    return row["id"], row["order_json"], row["version"]


async def update_order(db: Executor, order_id: int, owner_id: int | None,
                       values: dict[str, Any], expected_version: int | None,
                       if_match: tuple[int, ...] | None = None) -> tuple[str, int] | None:
    """Apply `values`: (the order's JSON, its new version); None when the order is not
    there (or not the owner's), the version does not match, or it is none of `if_match`
    (the If-Match versions; None: any). Checked in the UPDATE itself, not read first."""
    args: list[Any] = [order_id, owner_id, expected_version,
                       None if if_match is None else list(if_match)]
    sets = []
    for name, value in values.items():
        args.append(value)
        sets.append(f"{WRITABLE_COLUMNS[name]} = ${len(args)}")
    if not sets:
        sets.append("owner_id = owner_id")  # still a write: bumps version, announces
    row = await db.fetchrow(
        f"UPDATE orders SET {', '.join(sets)} WHERE id = $1"
        " AND ($2::bigint IS NULL OR owner_id = $2) AND ($3::bigint IS NULL OR version = $3)"
        " AND ($4::bigint[] IS NULL OR version = ANY($4::bigint[]))"
        f" {_RETURNING}",
        *args,
    )
    return None if row is None else (row["order_json"], row["version"])


async def delete_order(db: Executor, order_id: int, owner_id: int | None,
                       if_match: tuple[int, ...] | None = None) -> bool:
    """Delete the order if the owner (None: anyone's) has it and, with `if_match`, it is at
    one of those versions (checked in the DELETE itself)."""
    deleted = await db.fetchval(
        "DELETE FROM orders WHERE id = $1 AND ($2::bigint IS NULL OR owner_id = $2)"
        " AND ($3::bigint[] IS NULL OR version = ANY($3::bigint[])) RETURNING id",
        order_id, owner_id, None if if_match is None else list(if_match),
    )
    return deleted is not None


async def order_version(db: Executor, order_id: int, owner_id: int | None) -> int | None:
    return await db.fetchval(
        "SELECT version FROM orders WHERE id = $1 AND ($2::bigint IS NULL OR owner_id = $2)",
        order_id, owner_id,
    )


async def quote_frames(db: Executor, instruments: list[str]) -> list[tuple[str, int, str]]:
    """The current quotes of `instruments` as (instrument, version, `quote` frame), `ts` being
    their last update; instruments without a quote are left out."""
    rows = await db.fetch(
        "SELECT instrument, version, orderstream_quote_json(q,"
        " round(extract(epoch FROM updated_at) * 1000, 3))::text AS frame"
        " FROM quotes q WHERE instrument = ANY($1::text[]) ORDER BY instrument", instruments)
    return [(row["instrument"], row["version"], row["frame"]) for row in rows]


async def known_instruments(db: Executor, symbols: list[str]) -> set[str]:
    """Which of `symbols` are rows of `instruments`."""
    rows = await db.fetch(
        "SELECT symbol FROM instruments WHERE symbol = ANY($1::text[])", symbols)
    return {row["symbol"] for row in rows}


async def quotes_json(db: Executor, symbols: list[str] | None) -> list[str]:
    """Instruments (`symbols`, or all of them up to 1000) with their current quote as JSON
    objects: symbol, name, tick_size and the quote frame's fields (null while quiet)."""
    rows = await db.fetch(
        "SELECT json_build_object('instrument', i.symbol, 'name', i.name,"
        " 'tick_size', i.tick_size::text, 'bid', q.bid::text, 'ask', q.ask::text,"
        " 'last', q.last::text, 'version', q.version,"
        " 'ts', round(extract(epoch FROM q.updated_at) * 1000, 3))::text AS item"
        " FROM instruments i LEFT JOIN quotes q ON q.instrument = i.symbol"
        " WHERE $1::text[] IS NULL OR i.symbol = ANY($1::text[])"
        " ORDER BY i.symbol LIMIT 1000", symbols)
    return [row["item"] for row in rows]


async def unrealised_pnl(db: Executor, owner_id: int) -> tuple[str, int, int]:
    """Unrealised P&L of an owner's filled and partially filled orders at the last prices:
    (total as decimal text, orders priced, orders without a last price)."""
    row = await db.fetchrow(
        "SELECT coalesce(round(sum(CASE WHEN o.side = 'sell' THEN o.price - q.last"
        " ELSE q.last - o.price END * o.quantity), 2), 0)::text AS total,"
        " count(q.last) AS priced, count(*) - count(q.last) AS unpriced"
        " FROM orders o LEFT JOIN quotes q ON q.instrument = o.instrument"
        " WHERE o.owner_id = $1 AND o.status IN ('filled', 'partially_filled')", owner_id)
    assert row is not None
    return row["total"], row["priced"], row["unpriced"]
