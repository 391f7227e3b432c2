"""The client model of the version rule (tests/support/book.py) on the cases docs/protocol.md
names ("Versions and tombstones"): the property tests trust it as their oracle."""

from __future__ import annotations

from typing import Any

from tests.support.book import Book


def event(op: str, order_id: int, version: int, cursor: str = "c", **fields: Any) -> dict:
    return {"type": "order", "op": op, "seq": 1, "ts": 0, "cursor": cursor,
            "order": {"id": order_id, "version": version, **fields}}


def gone(order_id: int, owner_id: int, version: int) -> dict:
    """What the previous owner hears of a move: id, owner_id and version only."""
    return event("delete", order_id, version) | {
        "order": {"id": order_id, "owner_id": owner_id, "version": version}}


def test_the_highest_version_wins_whatever_the_arrival_order():
    book = Book()
    assert book.apply(event("update", 1, 3, price="3"))
    assert not book.apply(event("update", 1, 2, price="2"))  # stale
    assert not book.apply(event("update", 1, 3, price="3"))  # duplicate
    assert book.orders() == {1: {"id": 1, "version": 3, "price": "3"}}
    assert (book.events, book.ignored) == (3, 2)


def test_a_delete_replayed_before_an_update_of_its_version_keeps_the_order_deleted():
    book = Book()
    assert book.apply(event("insert", 1, 1))
    assert book.apply(event("delete", 1, 2))  # the later commit, replayed first
    assert not book.apply(event("update", 1, 2))  # hidden: not above the tombstone
    assert book.orders() == {}
    assert book.version(1) == (2, True)


def test_a_delete_at_the_held_version_applies_and_a_stale_one_does_not():
    book = Book()
    book.apply(event("update", 1, 4))
    assert not book.apply(event("delete", 1, 3))  # a newer version is held
    assert book.apply(event("delete", 1, 4))
    assert not book.apply(event("delete", 1, 4))  # the same tombstone again
    assert not book.apply(event("delete", 1, 2))
    assert book.version(1) == (4, True)


def test_an_order_moved_away_and_back_reappears_with_its_new_state():
    book = Book()
    book.apply(event("insert", 1, 1, price="1"))
    assert book.apply(gone(1, owner_id=7, version=2))  # moved to another owner
    assert book.orders() == {}
    assert not book.apply(event("update", 1, 2, price="2"))  # at the move's version: hidden
    assert book.apply(event("insert", 1, 3, price="3"))  # moved back
    assert book.orders() == {1: {"id": 1, "version": 3, "price": "3"}}


def test_cursors_resyncs_and_batches():
    book = Book()
    book.apply({"type": "subscribed", "channel": "orders", "cursor": "p1"})
    assert book.cursor == "p1"
    book.apply({"type": "subscribed", "channel": "orders", "after": "p1"})  # a resume
    assert book.cursor == "p1"
    assert book.apply({"type": "batch", "events": [event("insert", 1, 1, cursor="p2"),
                                                   event("insert", 2, 1, cursor="p3")]})
    assert book.cursor == "p3" and set(book.orders()) == {1, 2}
    book.apply({"type": "resync", "reason": "cursor expired"})
    assert book.resyncs == [{"type": "resync", "reason": "cursor expired"}]
