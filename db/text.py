"""What a PostgreSQL text value can hold, checked before any query sees it: JSON lets a
client send a lone surrogate ("\\ud800"), which cannot be encoded as UTF-8 (the driver
would refuse the query with a message naming no field), and control characters."""

from __future__ import annotations

import re

CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
# A username, as users_username_format (db/migrations/0001_schema.sql) checks it, and the
# rule in words for every message that refuses one.
USERNAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
USERNAME_RULE = "1-64 letters, digits or _ . @ -"


def encodable(text: str) -> bool:
    """Whether `text` is valid Unicode: no lone surrogate."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
