"""Stream positions and their cursors, on their own."""

from __future__ import annotations

import time

import pytest

from db.position import MAX_RANGES, CursorError, Position, with_cursor


def deliver(p: Position, *events: tuple[int, int], watermark: int | None = None) -> None:
    for xid, seq in events:
        p.advance(xid, seq, p.watermark if watermark is None else watermark)


def test_a_transaction_is_covered_only_up_to_its_last_delivered_event():
    p = Position(100)
    deliver(p, (100, 1), (100, 2))
    assert p.covers(100, 2) and not p.covers(100, 3)  # its third event is not delivered yet
    assert p.cursor() == "100;100.2"
    deliver(p, (101, 3))  # another transaction: 100 is complete
    assert p.covers(100, 99) and p.covers(101, 3) and not p.covers(101, 4)
    assert p.cursor() == "100:100;101.3"


def test_ranges_and_a_higher_watermark():
    p = Position(100)
    deliver(p, (100, 1), (101, 2), (102, 3), (105, 4), (106, 5))
    assert p.cursor() == "100:100-102,105;106.5"
    assert not p.covers(103, 1) and p.covers(99, 1)
    p.advance(107, 6, 103)
    assert p.cursor() == "103:105-106;107.6"
    assert p.covers(101, 1) and not p.covers(103, 1) and not p.covers(104, 1)


def test_parse_round_trips_and_never_expands_ranges():
    text = "7:7-1000000000,2000000000;2000000005.17"
    p = Position.parse(text)
    assert p.cursor() == text
    assert p.covers(500_000_000, 1) and not p.covers(1_500_000_000, 1)
    assert p.covers(2_000_000_005, 17) and not p.covers(2_000_000_005, 18)


def test_a_parsed_position_advances_like_any_other():
    p = Position.parse("10:12-14;16.3")
    p.advance(11, 4, 10)
    assert p.cursor() == "10:12-14,16;11.4"


@pytest.mark.parametrize("bad", ["", "x", "-1", "+1", "1:2-x", "5:3", "5:7-6", "1:a", "٣",
                                 "9" * 25, "1:5,3", "1:2-3,4", "1;5", "1;5.x", "1;.3",
                                 "1:" + ",".join(map(str, range(2, 300, 2)))])
def test_parse_refuses_what_the_server_never_hands_out(bad):
    with pytest.raises(CursorError):
        Position.parse(bad)


def test_too_many_ranges_degrade_to_a_safe_cursor():
    p = Position(0)
    deliver(p, *((xid, xid) for xid in range(2, 2 * (MAX_RANGES + 3), 2)))
    assert p.cursor().startswith("0:*;")
    resumed = Position.parse(p.cursor())
    assert not resumed.covers(2, 2)  # unknown: replayed again rather than lost


def test_a_long_transaction_holding_the_watermark_keeps_events_cheap():
    p = Position(1)
    started = time.perf_counter()
    for xid in range(2, 40_002, 2):  # 20,000 transactions, none adjacent, W stuck at 1
        p.advance(xid, xid, 1)
        p.cursor()
    per_event = (time.perf_counter() - started) / 20_000
    assert per_event < 0.0005, f"{per_event * 1e6:.0f} us per event"


def test_with_cursor_appends_to_the_trigger_frame():
    assert with_cursor('{"a" : 1}', "5:6") == '{"a" : 1, "cursor" : "5:6"}'
