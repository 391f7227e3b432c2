"""Stream positions and their cursors, on their own."""

from __future__ import annotations

import time

import pytest

from db.change import Change, Page
from db.position import MAX_PENDING, CursorError, Position, Snapshot
from web.frames import with_cursor


def live(p: Position, *events: tuple[int, int, str]) -> Position:
    """Deliver (xid, seq, writer snapshot text) in commit order."""
    for xid, seq, snapshot in events:
        p = p.after_change(xid, seq, Snapshot.parse(snapshot))
    return p


def test_a_transaction_is_covered_only_up_to_its_last_delivered_change():
    p = live(Position(100), (100, 1, "100:100:"), (100, 2, "100:100:"))
    assert p.covers(100, 2) and not p.covers(100, 3)  # its third change is not delivered yet
    assert p.cursor() == "p100;100.2"
    p = live(p, (101, 3, "100:101:100"))  # another transaction: 100 is complete
    assert p.covers(100, 99) and p.covers(101, 3) and not p.covers(101, 4)
    assert p.cursor() == "p101;101.3"


def test_the_writers_own_xid_is_not_covered_by_its_snapshot():
    # PostgreSQL leaves a transaction's own xid out of its snapshot's running list.
    p = live(Position(10), (12, 1, "11:13:11"))
    assert not p.covers(12, 2) and not p.finished(12) and not p.covers(11, 1)
    assert p.covers(10, 1)


def test_an_idle_transaction_stays_one_pending_entry_whatever_commits_around_it():
    """BEGIN; UPDATE ... left open in psql holds xid 1000 running; thousands of other
    transactions (order writers, and other work taking xids between them) commit."""
    p = Position(1000)
    xid = 1001
    for _ in range(5000):
        p = live(p, (xid, xid, f"1000:{xid}:1000"))
        xid += 3  # two xids of other work between order writers
    assert p.pending == ((1000, 1000),)
    assert len(p.cursor()) < 40, p.cursor()
    assert not p.covers(1000, 1) and p.covers(1002, 1) and p.covers(xid - 3, xid - 3)


def test_xids_a_snapshot_did_not_see_stay_uncovered_until_one_does():
    p = live(Position(10), (20, 1, "10:15:10,12"))  # 15..19 were not yet known to it
    assert [x for x in range(9, 21) if not p.finished(x)] == [10, 12, 15, 16, 17, 18, 19, 20]
    p = live(p, (21, 2, "12:21:12"))  # a later writer saw 10, 15-19 (and 20) finished
    assert [x for x in range(9, 22) if not p.finished(x)] == [12, 21]


def test_a_page_read_in_xid_order_covers_what_its_snapshot_saw_below_each_change():
    start = Position(100, ((90, 90),))
    snapshot = Snapshot(130, (120,))
    page = Page([Change(1, 90, 1, None, "{}"), Change(2, 105, 1, None, "{}"),
                 Change(3, 110, 1, None, "{}")], snapshot, complete=False)
    after = page.positions(start)
    assert after[0].covers(90, 1) and not after[0].covers(90, 2) and not after[0].finished(101)
    assert after[2].finished(105) and after[2].finished(109) and not after[2].finished(110)
    end = page.end(start)
    assert end.covers(110, 3) and not end.finished(111)
    done = Page([], snapshot, complete=True).end(end)
    assert done.finished(110) and done.finished(129) and not done.finished(120)
    assert not done.finished(130)


def test_the_rest_of_a_partial_transaction_is_read_first():
    start = Position(100, current=(104, 7))
    page = Page([Change(8, 104, 1, None, "{}"), Change(3, 101, 1, None, "{}")],
                Snapshot(110), complete=True)
    positions = page.positions(start)
    assert positions[0].current == (104, 8) and not positions[0].finished(101)
    assert positions[1].finished(104) and positions[1].covers(101, 3)
    assert page.end(start) == Position(110)


def test_union_and_includes():
    a = Position(100, ((50, 60),))
    b = Position(120, ((55, 55), (100, 110)))
    both = a.union(b)
    assert both == Position(120, ((55, 55), (100, 110)))
    assert both.includes(a) and both.includes(b) and not a.includes(b)
    assert Position(10, current=(10, 4)).union(Position(10, current=(10, 6))).current == (10, 6)


def test_includes_is_false_when_the_other_position_covers_more():
    a = Position(10, ((5, 6),), (5, 3))
    b = Position(10, ((5, 6),), (6, 2))
    assert b.covers(6, 1) and not a.covers(6, 1)
    assert not a.includes(b)


def test_a_union_still_names_a_cursor_this_server_accepts():
    a = Position(2000, tuple((i * 30, i * 30 + 20) for i in range(64)))
    b = Position(2000, tuple((i * 30 + 15, i * 30 + 35) for i in range(64)))
    Position.parse(a.union(b).cursor())


def test_parse_round_trips():
    for text in ("p7", "p2000000010~7-1000000000,2000000000;2000000005.17", "p9;9.1"):
        assert Position.parse(text).cursor() == text
    p = Position.parse("p2000000010~7-1000000000;2000000005.17")
    assert not p.covers(500_000_000, 1) and p.covers(1_500_000_000, 1)
    assert p.covers(2_000_000_005, 17) and not p.covers(2_000_000_005, 18)


def test_cursors_of_the_previous_format_still_resume():
    p = Position.parse("100:100-102,105;106.5")  # W=100, finished 100-102 and 105
    assert p.finished(99) and p.finished(101) and p.finished(105)
    assert not p.finished(103) and not p.finished(104) and not p.finished(106)
    assert p.covers(106, 5) and not p.covers(106, 6)
    assert Position.parse("100:*").finished(99) and not Position.parse("100:*").finished(100)


@pytest.mark.parametrize("bad", ["", "x", "-1", "+1", "1:2-x", "5:3", "5:7-6", "1:a", "٣",
                                 "9" * 25, "1:5,3", "1:2-3,4", "1;5", "1;5.x", "1;.3",
                                 "1:" + ",".join(map(str, range(2, 300, 2))), "p", "px",
                                 "p5~6", "p5~3-2", "p5~1,1", "p9~1-2,3", "p5;5",
                                 "p1000~" + ",".join(map(str, range(2, 300, 2)))])
def test_parse_refuses_what_the_server_never_hands_out(bad):
    with pytest.raises(CursorError):
        Position.parse(bad)


# -- the change log's generation (db/position.py; a lost log gets a new, random one) -------

G = 0x2C7E1F0A9B3D4E56  # a generation as orderstream_change_log_recover() draws them


def test_a_cursor_of_generation_0_reads_as_before_generations():
    """Byte for byte what servers without generations hand out, and what they handed out
    still parses, as generation 0."""
    p = Position(2000000010, ((7, 1000000000), (2000000000, 2000000000)), (2000000005, 17))
    assert p.cursor() == "p2000000010~7-1000000000,2000000000;2000000005.17"
    assert Position(7).cursor() == "p7" and Position(9, (), (9, 1), 0).cursor() == "p9;9.1"
    for text in ("p7", "p2000000010~7-1000000000,2000000000;2000000005.17", "p9;9.1"):
        assert Position.parse(text).generation == 0
    assert Position.parse("100:100-102,105;106.5").generation == 0  # the format before


def test_a_cursor_carries_its_generation_and_round_trips():
    p = Position(2000000010, ((7, 1000000000),), (2000000005, 17), G)
    assert p.cursor() == "p2000000010~7-1000000000;2000000005.17@2c7e1f0a9b3d4e56"
    assert Position.parse(p.cursor()) == p and Position.parse(p.cursor()).generation == G
    for text in ("p7@1", "p7@2c7e1f0a9b3d4e56", "p9;9.1@ff", "p9~3@3fffffffffffffff",
                 "p9@7fffffffffffffff"):
        assert Position.parse(text).cursor() == text
    # The same xids in two generations are two positions.
    assert Position(7, generation=G) != Position(7)
    assert hash(Position(7, generation=G)) != hash(Position(7))


def test_every_step_keeps_the_generation():
    start = Position(100, ((90, 90),), generation=G)
    stepped = [
        start.after_change(100, 1),
        start.after_change(101, 2, Snapshot(101, (90,))),
        start.after_read(105, 1, Snapshot(110, (90,))),
        start.finish(90), start.finish(120),
        start.merge(Snapshot(130, (90,))),
        start.union(Position(120, ((90, 95),), generation=G)),
        Position(0, generation=G).merge(
            Snapshot(1000, tuple(range(2, 2 * (MAX_PENDING + 10), 2)))),  # bounded
        *Page([Change(1, 90, 1, None, "{}"), Change(2, 105, 1, None, "{}")],
              Snapshot(110), complete=True, generation=G).positions(start),
        Page([Change(1, 90, 1, None, "{}")], Snapshot(110), complete=True,
             generation=G).end(start),
    ]
    assert [p.generation for p in stepped] == [G] * len(stepped)
    assert all(Position.parse(p.cursor()) == p for p in stepped)


def test_positions_of_two_generations_have_nothing_in_common():
    old, new = Position(500, ((90, 95),)), Position(300, generation=G)
    # The stream's position (the hub's, `other`) carries on; the other side is sent resync.
    assert old.union(new) == new and new.union(old) == old
    assert not new.includes(old) and not old.includes(new)
    assert new.includes(Position(200, generation=G))


def test_an_expired_page_starts_again_from_its_snapshot_in_its_generation():
    """Whoever reads it is sent resync. Nothing of the old position is kept: it may name
    xids the database has yet to hand out (a lost primary's), and covering them would skip
    their changes when they come."""
    lost = Position(5000, ((40, 41),), (4990, 3))  # of generation 0, past the database
    page = Page([], Snapshot(300, (290,)), complete=True, expired=True, generation=G)
    end = page.end(lost)
    assert end == Position(generation=G).merge(Snapshot(300, (290,)))
    assert end.generation == G and end.xmax == 300 and end.current is None
    assert not end.finished(290) and not end.finished(300) and end.finished(289)


@pytest.mark.parametrize("bad", ["p5@", "p5@0", "p5@01", "p5@A", "p5@g", "p5@-1", "p5@+1",
                                 "p5@0x1", "p5@1_0", "p5@ 1", "p5@1@2", "p5@" + "f" * 17,
                                 "p5@8000000000000000", "@1", "p@1", "p5;5.1@", "5:6@1"])
def test_parse_refuses_a_generation_the_server_never_writes(bad):
    with pytest.raises(CursorError):
        Position.parse(bad)


def test_too_many_pending_ranges_degrade_to_a_safe_cursor():
    p = Position(0)
    running = tuple(range(2, 2 * (MAX_PENDING + 10), 2))
    p = p.merge(Snapshot(running[-1] + 1, running))
    assert len(p.pending) == MAX_PENDING
    resumed = Position.parse(p.cursor())
    assert not resumed.finished(running[MAX_PENDING])  # unknown: read again rather than lost
    assert not resumed.finished(running[-1] + 1)


@pytest.mark.parametrize("generation", [0, G])
def test_positions_stay_cheap_per_change(generation):
    p = Position(1, generation=generation)
    started = time.perf_counter()
    for xid in range(2, 40_002, 2):
        p = p.after_change(xid, xid, Snapshot(xid, (1,)))
        p.cursor()
    per_change = (time.perf_counter() - started) / 20_000
    assert per_change < 0.0005, f"{per_change * 1e6:.0f} us per change"


def test_with_cursor_appends_to_the_trigger_frame():
    assert with_cursor('{"a" : 1}', "p5") == '{"a" : 1, "cursor" : "p5"}'


@pytest.mark.parametrize("start, snapshot", [
    (Position(), Snapshot(500)),
    (Position(400, ((90, 95), (120, 120))), Snapshot(505, (90, 501))),
    (Position(400, ((90, 95),), (300, 7), generation=G), Snapshot(505, (90,))),
    (Position(600, ((90, 95),), (500, 3), generation=G), None),  # the same transaction, on
])
def test_after_changes_is_after_change_one_by_one(start, snapshot):
    seqs = [4, 5, 9, 10, 11]
    position, one_by_one = start, []
    for index, seq in enumerate(seqs):
        position = position.after_change(500, seq, snapshot if index == 0 else None)
        one_by_one.append(position.cursor())
    last, cursors = start.after_changes(500, seqs, snapshot)
    assert cursors == one_by_one
    assert last == position and last.cursor() == one_by_one[-1]
    assert start.after_changes(500, seqs[:1], snapshot) == (
        start.after_change(500, 4, snapshot), one_by_one[:1])
