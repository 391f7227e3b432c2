"""A program's copy of the orders it watches, kept by the version rule (docs/protocol.md,
"Versions and tombstones"), the same rule as the dashboard's static/js/version-book.js."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orderstream_client.stream import Stream

Order = dict[str, Any]

# Tombstones remembered; those made longest ago are forgotten first (identity ids are never
# reused, so a forgotten one can only matter to an event older than that many deletes).
MAX_TOMBSTONES = 100_000


class Book:
    """The orders as the stream says they are: `apply` every event, read `orders()`.

    Per order id the book keeps the highest version it heard. An insert or update applies
    only above it; a delete at version v applies unless a higher version is held, and
    leaves a tombstone that hides every event of that order at or below v (a higher
    version brings the order back). So events may come twice, late, or replayed after a
    page load, and the book still ends equal to the database.
    """

    def __init__(self, max_tombstones: int = MAX_TOMBSTONES) -> None:
        self._orders: dict[int, Order] = {}
        # id -> the version a delete took away; insertion order is age (oldest first).
        self._tombstones: dict[int, int] = {}
        self._max_tombstones = max_tombstones

    def __len__(self) -> int:
        return len(self._orders)

    def apply(self, event: Mapping[str, Any]) -> bool:
        """Take one frame from the stream; True if the book changed. Frames other than
        order events (and batches of them) change nothing."""
        kind = event.get("type")
        if kind == "batch":
            return any([self.apply(e) for e in event["events"]])
        if kind != "order":
            return False
        order = event["order"]
        order_id, version = int(order["id"]), int(order["version"])
        if event["op"] == "delete":
            return self._delete(order_id, version)
        return self._put(order_id, version, dict(order))

    def orders(self) -> dict[int, Order]:
        """{id: order} for every order the book holds (tombstones left out); a copy."""
        return dict(self._orders)

    def version(self, order_id: int) -> tuple[int, bool] | None:
        """(highest version held, whether it is a delete), or None if never heard of."""
        if order_id in self._orders:
            return int(self._orders[order_id]["version"]), False
        if order_id in self._tombstones:
            return self._tombstones[order_id], True
        return None

    def load(self, orders: Iterable[Mapping[str, Any]]) -> None:
        """Replace what the book holds with a page load (orders from `GET /api/orders`):
        after a `resync`, or to start. A row at or below a known tombstone stays hidden.
        Events queued meanwhile may then be applied: older ones change nothing."""
        fresh: dict[int, Order] = {}
        for row in orders:
            order_id, version = int(row["id"]), int(row["version"])
            deleted = self._tombstones.get(order_id)
            if deleted is not None and version <= deleted:
                continue
            held = fresh.get(order_id)
            if held is None or int(held["version"]) < version:
                fresh[order_id] = dict(row)
        for order_id in fresh:
            self._tombstones.pop(order_id, None)
        self._orders = fresh

    async def reload(self, stream: Stream) -> None:
        """Load the orders `stream` watches (same owner) from the server's API, as `load`.
        Call it between events, e.g. on `resync`, or once after connecting."""
        self.load(await stream.fetch_orders())

    def _put(self, order_id: int, version: int, order: Order) -> bool:
        held = self._orders.get(order_id)
        if held is not None and version <= int(held["version"]):
            return False  # stale or a duplicate
        deleted = self._tombstones.get(order_id)
        if deleted is not None:
            if version <= deleted:
                return False
            del self._tombstones[order_id]  # brought back above its delete
        self._orders[order_id] = order
        return True

    def _delete(self, order_id: int, version: int) -> bool:
        held = self._orders.get(order_id)
        if held is not None and int(held["version"]) > version:
            return False  # brought back since
        deleted = self._tombstones.get(order_id)
        if deleted is not None and deleted >= version:
            return False  # a duplicate, or an older delete
        self._orders.pop(order_id, None)
        self._tombstones.pop(order_id, None)
        self._tombstones[order_id] = version
        if len(self._tombstones) > self._max_tombstones:
            del self._tombstones[next(iter(self._tombstones))]
        return True
