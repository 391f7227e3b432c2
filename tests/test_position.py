"""Stream positions and their cursors, on their own."""

from __future__ import annotations

import pytest

from db.position import MAX_RANGES, CursorError, Position, with_cursor


def test_cursor_names_the_watermark_and_the_ids_seen_above_it():
    p = Position(100)
    for xid in (100, 101, 102, 105):
        p.advance(xid, 100)
    assert p.cursor() == "100:100-102,105"
    assert [p.covers(x) for x in (99, 100, 103, 105, 106)] == [True, True, False, True, False]


def test_a_higher_watermark_forgets_what_it_covers():
    p = Position(100)
    p.advance(100, 100)
    p.advance(104, 100)
    p.advance(105, 103)
    assert p.cursor() == "103:104-105"
    assert p.covers(101) and p.covers(104) and not p.covers(103)


def test_parse_round_trips_and_never_expands_ranges():
    p = Position.parse("7:7-1000000000,2000000000")
    assert p.cursor() == "7:7-1000000000,2000000000"
    assert p.covers(6) and p.covers(500_000_000) and not p.covers(1_500_000_000)
    assert p.seen == set()  # kept as ranges


def test_a_parsed_position_advances_like_any_other():
    p = Position.parse("10:12-14")
    p.advance(11, 10)
    assert p.cursor() == "10:11-14"
    p.advance(20, 13)
    assert p.cursor() == "13:13-14,20"


@pytest.mark.parametrize("bad", ["", "x", "-1", "+1", "1:2-x", "5:3", "5:7-6", "1:a", "٣",
                                 "9" * 25, "1:" + ",".join(map(str, range(2, 300, 2)))])
def test_parse_refuses_what_the_server_never_hands_out(bad):
    with pytest.raises(CursorError):
        Position.parse(bad)


def test_too_many_ranges_degrade_to_a_safe_cursor():
    p = Position(0)
    for xid in range(2, 2 * (MAX_RANGES + 2), 2):
        p.advance(xid, 0)
    assert p.cursor() == "0:*"
    resumed = Position.parse(p.cursor())
    assert not resumed.covers(2)  # unknown: replayed again rather than lost


def test_with_cursor_appends_to_the_trigger_frame():
    assert with_cursor('{"a" : 1}', "5:6") == '{"a" : 1, "cursor" : "5:6"}'
