"""A client's view of the orders stream for the tests: orderstream_client's Book (the version
rule of docs/protocol.md, "Versions and tombstones", the same rule as
static/js/version-book.js), plus what the tests check it against: the cursor to resume from,
the resyncs heard, and how many order events came and how many of those changed nothing.
The property tests thereby hold the server to the client's own rule."""

from __future__ import annotations

from typing import Any

import orderstream_client


class Book(orderstream_client.Book):
    """`apply(frame)` every frame received (decoded JSON); `orders()` is what the client shows."""

    def __init__(self) -> None:
        super().__init__()
        # The cursor to resume from: the last event's, or a fresh subscription's.
        self.cursor: str | None = None
        self.resyncs: list[dict[str, Any]] = []
        self.events = 0  # order events applied or not
        self.ignored = 0  # ... of which changed nothing (stale, duplicate, under a tombstone)

    def apply(self, frame: dict[str, Any]) -> bool:  # type: ignore[override]
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
        changed = super().apply(frame)
        self.ignored += not changed
        return changed
