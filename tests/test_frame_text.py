"""The triggers build each frame by concatenation (db/triggers.sql, orderstream_order_text):
byte for byte what json_build_object makes, whatever the text holds and whichever path a
statement takes (one row, a few, more than 100), and the API's JSON is the same text."""

from __future__ import annotations

import json

import psycopg
import pytest

from tests.conftest import User

# What the frame was before: the reference the concatenation must equal byte for byte.
REFERENCE = """
SELECT json_build_object(
  'type', 'order', 'op', %(op)s::text, 'seq', c.seq, 'ts', (c.frame::json ->> 'ts')::numeric,
  'order', json_build_object(
    'id', o.id, 'owner_id', o.owner_id, 'owner', u.username, 'instrument', o.instrument,
    'side', o.side, 'quantity', o.quantity::text, 'price', o.price::text,
    'status', o.status, 'note', o.note, 'version', o.version,
    'created_at', to_char(o.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
    'updated_at', to_char(o.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')))::text,
  c.frame
FROM order_changes c JOIN orders o ON o.id = (c.frame::json -> 'order' ->> 'id')::bigint
JOIN users u ON u.id = o.owner_id
WHERE c.seq > %(after)s ORDER BY c.seq
"""

TEXTS = ['', 'plain', 'quote " and backslash \\ and slash /', 'tab\there\nnewline\r\x01\x1f',
         'unicode é ü 中文 \u2028 \U0001F600', "' single", '{"json": [1, 2]}']


def last_seq(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT coalesce(max(seq), 0) FROM order_changes").fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("rows", [1, 3, 150])
def test_frames_equal_json_build_object(sql: psycopg.Connection, make_user, rows: int) -> None:
    user: User = make_user()
    after = last_seq(sql)
    texts = [TEXTS[i % len(TEXTS)] for i in range(rows)]
    sql.execute(
        "INSERT INTO orders (owner_id, instrument, quantity, price, note)"
        " SELECT %s, 'I' || t, 1.50, 0.000100, t FROM unnest(%s::text[]) t",
        (user.id, texts))
    inserted = sql.execute(REFERENCE, {"op": "insert", "after": after}).fetchall()
    assert len(inserted) == rows
    assert all(reference == frame for reference, frame in inserted)

    after = last_seq(sql)
    sql.execute("UPDATE orders SET quantity = quantity * 10, status = 'filled'"
                " WHERE owner_id = %s", (user.id,))
    updated = sql.execute(REFERENCE, {"op": "update", "after": after}).fetchall()
    assert len(updated) == rows
    assert all(reference == frame for reference, frame in updated)


async def test_api_json_is_the_frame_s_order(http, make_user, sql: psycopg.Connection) -> None:
    user: User = make_user()
    after = last_seq(sql)
    note = TEXTS[3] + TEXTS[4]
    order_id = sql.execute(
        "INSERT INTO orders (owner_id, instrument, quantity, price, note)"
        " VALUES (%s, 'ACME', 2, 3.25, %s) RETURNING id", (user.id, note)).fetchone()[0]
    row = sql.execute("SELECT frame FROM order_changes WHERE seq > %s", (after,)).fetchone()
    assert row is not None
    response = await http.get(f"/api/orders/{order_id}", headers=user.auth)
    assert response.status_code == 200
    frame_order = json.loads(row[0])["order"]
    assert response.json() == frame_order
    assert frame_order["note"] == note
