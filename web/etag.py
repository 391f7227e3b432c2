"""ETags for orders: the version, as a strong entity-tag ("7"); If-Match and If-None-Match.

An order's version is bumped by the trigger on every change, whoever writes it, so it
names the representation exactly. If-Match is checked inside the writing statement
(`WHERE version = ANY(...)`), never read-then-write.
"""

from __future__ import annotations

import re

from starlette.requests import Request

from db.queries import MAX_BIGINT
from web.errors import ApiError

MAX_HEADER_CHARS = 1000
# RFC 9110 entity-tag: [W/] DQUOTE *etagc DQUOTE, etagc = %x21 / %x23-7E / obs-text.
_TAG = re.compile(r'\s*(W/)?"([\x21\x23-\x7e\x80-\xff]*)"\s*')


def etag(version: int) -> str:
    """The strong ETag of an order at `version`."""
    return f'"{version}"'


def _tags(name: str, raw: str) -> list[tuple[bool, str]]:
    """(weak, opaque) of each entity-tag in a list; 400 when the list is malformed."""
    if len(raw) > MAX_HEADER_CHARS:
        raise ApiError(400, "bad_request", f"{name} is longer than {MAX_HEADER_CHARS} characters",
                       {name: f"at most {MAX_HEADER_CHARS} characters"})
    tags: list[tuple[bool, str]] = []
    for part in raw.split(","):
        if not part.strip():
            continue  # RFC 9110 list syntax allows empty elements
        match = _TAG.fullmatch(part)
        if match is None:
            raise ApiError(400, "bad_request",
                           f'{name} must be "*" or a list of entity-tags such as "7"'
                           f" (quotes included), got {raw!r}",
                           {name: 'must be * or quoted entity-tags such as "7"'})
        tags.append((match.group(1) is not None, match.group(2)))
    if not tags:
        raise ApiError(400, "bad_request", f"{name} is empty", {name: "must not be empty"})
    return tags


def _version(opaque: str) -> int | None:
    if not (opaque.isascii() and opaque.isdigit()) or len(opaque) > 19:
        return None
    version = int(opaque)
    return version if 1 <= version <= MAX_BIGINT else None


def if_match(request: Request) -> tuple[int, ...] | None:
    """The versions If-Match accepts: None for no condition (absent, or "*": any existing
    order); otherwise the strong tags that name a version. Weak tags never match (If-Match
    compares strongly) and a tag that is no version of ours matches nothing, so the tuple
    may be empty: then an existing order always fails the precondition (412)."""
    raw = request.headers.get("if-match")
    if raw is None:
        return None
    if raw.strip() == "*":
        return None
    versions = (_version(opaque) for weak, opaque in _tags("If-Match", raw) if not weak)
    return tuple(v for v in versions if v is not None)


def if_none_match(request: Request, version: int) -> bool:
    """True when If-None-Match names `version` (weak comparison) or is "*": answer 304."""
    raw = request.headers.get("if-none-match")
    if raw is None:
        return False
    if raw.strip() == "*":
        return True
    return any(_version(opaque) == version for _, opaque in _tags("If-None-Match", raw))
