"""Turn list requests (plain or DataTables server-side protocol) into an OrderQuery."""

from __future__ import annotations

import re
from collections.abc import Mapping

from db.queries import EXACT_COLUMNS, MAX_BIGINT, SEARCH_COLUMNS, SORT_COLUMNS, OrderQuery
from web.auth import WebUser
from web.errors import ApiError
from web.order_input import MAX_INSTRUMENT, SIDES, STATUSES

DEFAULT_LIMIT = 50
MAX_OFFSET = 10**9
MAX_QUERY_CHARS = 200
MAX_WORDS = 10
MAX_DT_COLUMNS = 50
_INTEGER = re.compile(r"-?[0-9]{1,18}")
_OWNER = re.compile(r"[0-9]{1,19}")
_DT_KEY = re.compile(r"^(columns|order)\[(\d{1,4})\]\[(\w+)\](?:\[(\w+)\])?$")


def _int(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    # Plain digits only: int() would also take " 5", "+5" and "1_0".
    if not _INTEGER.fullmatch(raw):
        raise ApiError(400, "bad_request", f"{name} must be an integer, got {raw!r}",
                       {name: "must be an integer"})
    value = int(raw)
    if not low <= value <= high:
        raise ApiError(400, "bad_request", f"{name} must be between {low} and {high}, got {value}",
                       {name: f"must be between {low} and {high}"})
    return value


def _words(text: str, field: str = "q") -> tuple[str, ...]:
    if len(text) > MAX_QUERY_CHARS:
        raise ApiError(400, "bad_request", f"{field} is longer than {MAX_QUERY_CHARS} characters",
                       {field: f"at most {MAX_QUERY_CHARS} characters"})
    if "\x00" in text:  # PostgreSQL text cannot hold it: refuse here, naming the field
        raise ApiError(400, "bad_request", f"{field} must not contain NUL characters",
                       {field: "must not contain NUL characters"})
    words = tuple(text.split())
    if len(words) > MAX_WORDS:
        raise ApiError(400, "bad_request", f"{field} has more than {MAX_WORDS} words",
                       {field: f"at most {MAX_WORDS} words"})
    return words


def owner_scope(user: WebUser, params: Mapping[str, str]) -> int | None:
    """Whose orders the list covers: a user's own; staff everyone's or one owner's."""
    raw = params.get("owner")
    if raw is None or raw in ("", "*"):
        return None if user.is_staff else user.id
    # Plain digits within bigint only, as for limit/offset: int() would take " 5", "+5",
    # "1_0" and Arabic-Indic digits, and a value past bigint reached the database (422).
    if not _OWNER.fullmatch(raw) or not 1 <= int(raw) <= MAX_BIGINT:
        raise ApiError(400, "bad_request", f"owner must be a user id or '*', got {raw!r}",
                       {"owner": "must be a user id or '*'"})
    owner = int(raw)
    if owner != user.id and not user.is_staff:
        raise ApiError(403, "forbidden", "only staff may list other owners' orders",
                       {"owner": "only staff may filter by owner"})
    return owner


# Exact filters with a closed set of values; the others (instrument) take any short text.
EXACT_CHOICES: dict[str, tuple[str, ...]] = {"status": STATUSES, "side": SIDES}


def exact_filters(params: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """status=, side=, instrument=: each an exact, case-sensitive match; empty means absent."""
    equals: list[tuple[str, str]] = []
    for name in EXACT_COLUMNS:
        value = params.get(name)
        if value is None or value == "":
            continue
        choices = EXACT_CHOICES.get(name)
        if choices is not None and value not in choices:
            raise ApiError(400, "bad_request",
                           f"{name} must be one of {', '.join(choices)}; got {value!r}",
                           {name: f"must be one of {', '.join(choices)}"})
        if choices is None and (len(value) > MAX_INSTRUMENT or not value.isprintable()):
            raise ApiError(400, "bad_request",
                           f"{name} must be 1-{MAX_INSTRUMENT} printable characters;"
                           f" got {value[:80]!r}",
                           {name: f"1-{MAX_INSTRUMENT} printable characters"})
        equals.append((name, value))
    return tuple(equals)


def parse_sort(raw: str | None) -> tuple[tuple[str, bool], ...]:
    if raw is None or not raw.strip():
        return (("id", True),)
    sort: list[tuple[str, bool]] = []
    for part in raw.split(","):
        part = part.strip()
        descending = part.startswith("-")
        column = part.lstrip("-+")
        if column not in SORT_COLUMNS:
            raise ApiError(400, "bad_request",
                           f"cannot sort by {part!r}; sortable: {', '.join(SORT_COLUMNS)}",
                           {"sort": f"unknown column {column!r}"})
        sort.append((column, descending))
    if len(sort) > len(SORT_COLUMNS):
        raise ApiError(400, "bad_request", "too many sort columns", {"sort": "too many columns"})
    return tuple(sort)


def plain_query(user: WebUser, params: Mapping[str, str], max_page: int) -> OrderQuery:
    return OrderQuery(
        owner_id=owner_scope(user, params),
        limit=_int(params, "limit", DEFAULT_LIMIT, 1, max_page),
        offset=_int(params, "offset", 0, 0, MAX_OFFSET),
        sort=parse_sort(params.get("sort")),
        words=_words(params.get("q", "")),
        equals=exact_filters(params),
    )


def _dt_columns(params: Mapping[str, str]) -> dict[int, dict[str, str]]:
    """columns[i][...] and order[i][...] into {index: {key: value}} (search[value] as 'search')."""
    grouped: dict[str, dict[int, dict[str, str]]] = {"columns": {}, "order": {}}
    for key, value in params.items():
        match = _DT_KEY.match(key)
        if not match:
            continue
        kind, index, attr, sub = match.group(1), int(match.group(2)), match.group(3), match.group(4)
        if index >= MAX_DT_COLUMNS:
            continue
        name = attr if sub is None else f"{attr}.{sub}"
        grouped[kind].setdefault(index, {})[name] = value
    return grouped  # type: ignore[return-value]


def _truthy(value: str | None, default: bool = True) -> bool:
    return default if value is None else value.strip().lower() == "true"


def datatables_query(user: WebUser, params: Mapping[str, str], max_page: int
                     ) -> tuple[int, OrderQuery]:
    """The DataTables server-side request (draw, start, length, search, order, columns)."""
    try:
        draw = int(params.get("draw", "0"))
    except ValueError:
        draw = 0  # the manual: cast draw to int; garbage is not fatal
    start = _int(params, "start", 0, 0, MAX_OFFSET)
    length = _int(params, "length", 10, -1, max_page)
    if length in (-1, 0):
        length = max_page  # -1 means "all", capped (documented in the OpenAPI description)
    grouped = _dt_columns(params)
    columns: dict[int, dict[str, str]] = grouped["columns"]  # type: ignore[assignment]
    orders: dict[int, dict[str, str]] = grouped["order"]  # type: ignore[assignment]

    def column_name(spec: dict[str, str]) -> str:
        return spec.get("data") or spec.get("name") or ""

    sort: list[tuple[str, bool]] = []
    for _, spec in sorted(orders.items()):
        try:
            index = int(spec.get("column", ""))
        except ValueError:
            continue
        column = columns.get(index)
        if column is None or not _truthy(column.get("orderable")):
            continue
        name = column_name(column)
        if name in SORT_COLUMNS and all(name != s[0] for s in sort):
            sort.append((name, spec.get("dir", "asc").lower() == "desc"))

    searchable = [
        column_name(spec) for _, spec in sorted(columns.items())
        if _truthy(spec.get("searchable")) and column_name(spec) in SEARCH_COLUMNS
    ]
    column_filters = tuple(
        (column_name(spec), spec["search.value"].strip())
        for _, spec in sorted(columns.items())
        if spec.get("search.value", "").strip() and _truthy(spec.get("searchable"))
        and column_name(spec) in SEARCH_COLUMNS
    )
    for _, value in column_filters:
        _words(value, "columns[search][value]")
    return draw, OrderQuery(
        owner_id=owner_scope(user, params),
        limit=length,
        offset=start,
        sort=tuple(sort) or (("id", True),),
        words=_words(params.get("search[value]", ""), "search[value]"),
        search_columns=tuple(searchable) if columns else tuple(SEARCH_COLUMNS),
        column_filters=column_filters,
        equals=exact_filters(params),
    )
