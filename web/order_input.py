"""Validate order bodies from the API into column values, or say precisely what is wrong."""

from __future__ import annotations

import json
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from starlette.requests import Request

from db.queries import MAX_BIGINT
from db.text import CONTROL_CHARACTERS, encodable
from web.errors import ApiError, shown

SIDES = ("buy", "sell")
STATUSES = ("new", "partially_filled", "filled", "cancelled", "rejected")
MAX_INSTRUMENT = 64
MAX_NOTE = 16 * 1024
MAX_NUMBER_CHARS = 40
# ASCII digits only: \d would also take other scripts' digits, which the OpenAPI pattern
# (JSON Schema's \d is ASCII) refuses.
DECIMAL_TEXT = re.compile(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$")
ORDER_FIELDS = ("owner_id", "instrument", "side", "quantity", "price", "status", "note")


async def json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object (numbers as Decimal, never float)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise ApiError(415, "unsupported_media_type",
                       f"expected Content-Type application/json, got {content_type or 'none'!r}")
    body = await request.body()  # at most 64 KiB: web/body.py caps every request's body
    try:
        data = json.loads(body, parse_float=Decimal, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "bad_json", f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "bad_json", f"body must be a JSON object, got {type(data).__name__}")
    return data


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number")


def _decimal(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise ValueError("must be a decimal string such as \"101.25\"")
    text = str(value).strip()
    if len(text) > MAX_NUMBER_CHARS:
        raise ValueError(f"must be a decimal string of at most {MAX_NUMBER_CHARS} characters")
    if not DECIMAL_TEXT.match(text):
        raise ValueError(f"must be a decimal string such as \"101.25\", got {shown(value)}")
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"must be a decimal string, got {shown(value)}") from None
    if abs(number.adjusted()) > 30:
        raise ValueError(f"is out of range: {shown(value)}")
    return number


def _text(value: Any, limit: int, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {shown(value)}")
    text = value.strip()
    if not text and not allow_empty:
        raise ValueError("must not be blank")
    if len(text) > limit:
        raise ValueError(f"must be at most {limit} characters")
    if CONTROL_CHARACTERS.search(text):
        raise ValueError("must not contain control characters")
    if not encodable(text):
        raise ValueError("must be valid Unicode text")
    return text


def _choice(value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"must be one of {', '.join(choices)}; got {shown(value)}")
    return value


def positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value > MAX_BIGINT:
        raise ValueError(f"must be a positive integer, got {shown(value)}")
    return value


def _field(name: str, value: Any) -> Any:
    if name == "instrument":
        return _text(value, MAX_INSTRUMENT)
    if name == "side":
        return _choice(value, SIDES)
    if name == "status":
        return _choice(value, STATUSES)
    if name == "note":
        return _text(value, MAX_NOTE, allow_empty=True)
    if name == "owner_id":
        return positive_int(value)
    number = _decimal(value)
    if name == "quantity" and number <= 0:
        raise ValueError(f"must be greater than 0, got {shown(value)}")
    if name == "price" and number < 0:
        raise ValueError(f"must not be negative, got {shown(value)}")
    return number


def order_values(data: dict[str, Any], *, creating: bool, may_set_owner: bool
                 ) -> tuple[dict[str, Any], int | None]:
    """Column values from a POST/PATCH body, and the expected `version` (PATCH only).

    Raises ApiError 422 listing every bad field at once.
    """
    problems: dict[str, str] = {}
    values: dict[str, Any] = {}
    expected_version: int | None = None
    for name, value in data.items():
        if name == "version" and not creating:
            try:
                expected_version = positive_int(value)
            except ValueError as exc:
                problems[name] = str(exc)
            continue
        if name not in ORDER_FIELDS:
            problems[name] = "unknown field"
            continue
        if name == "owner_id" and not may_set_owner:
            problems[name] = "only staff may set the owner"
            continue
        try:
            values[name] = _field(name, value)
        except ValueError as exc:
            problems[name] = str(exc)
    if creating:
        for required in ("instrument", "quantity", "price"):
            if required not in data:
                problems[required] = "is required"
    if problems:
        raise ApiError(422, "invalid", "the order is not valid", problems)
    if not values:
        # An empty write would still bump the version: every dashboard would get an event,
        # and every ETag would change, for nothing.
        raise ApiError(422, "invalid", "nothing to change: send at least one of "
                                       + ", ".join(ORDER_FIELDS))
    return values, expected_version
