"""A client's view of the orders stream under the version rule (docs/protocol.md, "Versions
and tombstones"): the model tests hold the server to, the same rule as
static/js/version-book.js.

Per order id the book holds the highest version heard and whether that version was a delete
(a tombstone):

- an insert or update at version v applies only if v is above every version held for the id,
  tombstone included (otherwise it is stale or a duplicate);
- a delete at version v applies if no higher version is held, and records the tombstone v: it
  hides every event of that order at or below v;
- an insert or update above the tombstone brings the order back (an order moved away and back
  arrives as an insert with a higher version than the delete that took it away).
"""

from __future__ import annotations

from typing import Any


class Book:
    """`apply(frame)` every frame received (decoded JSON); `orders()` is what the client shows."""

    def __init__(self) -> None:
        self._known: dict[int, tuple[int, bool]] = {}  # id -> (highest version, deleted)
        self._orders: dict[int, dict[str, Any]] = {}  # id -> the order at that version
        # The cursor to resume from: the last event's, or a fresh subscription's.
        self.cursor: str | None = None
        self.resyncs: list[dict[str, Any]] = []
        self.events = 0  # order events applied or not
        self.ignored = 0  # ... of which changed nothing (stale, duplicate, under a tombstone)

    def apply(self, frame: dict[str, Any]) -> bool:
        """Take one frame; True if it changed what the book holds. Frames other than order
        events (and batches of them) change nothing, but `subscribed` may give a cursor and
        `resync` is recorded in `resyncs`."""
        kind = frame.get("type")
        if kind == "batch":
            return any([self.apply(event) for event in frame["events"]])
        if kind == "subscribed":
            if frame.get("channel") == "orders" and "cursor" in frame:
                self.cursor = frame["cursor"]
            return False
        if kind == "resync":
            self.resyncs.append(frame)
            return False
        if kind != "order":
            return False
        if "cursor" in frame:
            self.cursor = frame["cursor"]
        self.events += 1
        order = frame["order"]
        order_id, version = int(order["id"]), int(order["version"])
        held = self._known.get(order_id)
        if frame["op"] == "delete":
            if held is not None and (held[0] > version or (held[1] and held[0] >= version)):
                self.ignored += 1
                return False
            self._known[order_id] = (version, True)
            self._orders.pop(order_id, None)
            return True
        if held is not None and version <= held[0]:
            self.ignored += 1
            return False
        self._known[order_id] = (version, False)
        self._orders[order_id] = order
        return True

    def orders(self) -> dict[int, dict[str, Any]]:
        """The orders shown: {id: order as its newest event carried it}, tombstones left out."""
        return dict(self._orders)

    def version(self, order_id: int) -> tuple[int, bool] | None:
        """(highest version held, whether it is a tombstone), or None if never heard of."""
        return self._known.get(order_id)
