"""Server -> client frames that are not the trigger's own: resync, and an order event as
seen by one subscription (an order moving between owners)."""

from __future__ import annotations

import json
from typing import Literal

from db.change import Change

ALL_OWNERS: Literal["*"] = "*"
OwnerKey = int | Literal["*"]


def with_cursor(frame: str, cursor: str) -> str:
    """Append the cursor to an event frame from the trigger (a JSON object without one)."""
    return f'{frame[:-1]}, "cursor" : "{cursor}"}}'


def event_ts(frame: str) -> float | None:
    """The `ts` (epoch ms at the trigger) of an order event frame, without decoding it; None
    for any other frame. Order events start with their type: the trigger's
    `{"type" : "order"` (json_build_object's spacing) or json.dumps's `{"type": "order"`."""
    if '"order"' not in frame[:20]:
        return None
    start = frame.find('"ts"')
    if start < 0:
        return None
    try:
        return float(frame[start + 4:frame.find(",", start)].lstrip(" :"))
    except ValueError:
        return None


def resync_frame(reason: str) -> str:
    return json.dumps({"type": "resync", "reason": reason})


def frame_for(key: OwnerKey, change: Change, frame: str) -> str | None:
    """The event `frame` (cursor included) of `change` as a subscription to `key` sees it:
    unchanged for staff watching everyone and for the owner; an insert for the owner it
    moved to; a bare delete for the owner it moved away from; None if not theirs."""
    if key == ALL_OWNERS:
        return frame
    moved = change.old_owner_id is not None and change.old_owner_id != change.owner_id
    if change.owner_id == key:
        return frame_with_op(frame, "insert") if moved else frame
    if moved and change.old_owner_id == key:
        return delete_frame_for(frame, key)
    return None


def frame_with_op(frame: str, op: str) -> str:
    """The same event frame with another op (an order moving between owners)."""
    event = json.loads(frame)
    event["op"] = op
    return json.dumps(event)


def delete_frame_for(frame: str, old_owner_id: int) -> str:
    """The frame telling `old_owner_id` that an order it may no longer read is gone, at the
    version that moved it (a tombstone: older events of the order must not revive it)."""
    event = json.loads(frame)
    order = event["order"]
    return json.dumps(
        {
            "type": "order",
            "op": "delete",
            "seq": event["seq"],
            "ts": event["ts"],
            "cursor": event["cursor"],
            "order": {"id": order["id"], "owner_id": old_owner_id, "version": order["version"]},
        }
    )
