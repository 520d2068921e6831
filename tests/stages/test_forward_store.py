"""The buffer's SQL for forwarder positions inside a frame and for drop_oldest, on a real file."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.buffer import store
from gateway.buffer.store import BatchWrite
from tests.stages.test_store import frame, frame_ids, open_db, tx, write

T0 = 1_700_000_000_000


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    connection = open_db(tmp_path / "fleetgate.db")
    yield connection
    connection.close()


def test_a_cursor_can_point_inside_a_frame_and_never_goes_back(
        conn: sqlite3.Connection) -> None:
    write(conn, BatchWrite(frames=[frame(i) for i in range(1, 6)]))
    tx(conn, lambda c: store.advance_cursor(c, "a", 2, T0, ("a",), 100))  # 100 entries of #3
    tx(conn, lambda c: store.advance_cursor(c, "a", 2, T0, ("a",), 50))  # older: ignored
    state = store.load_state(conn)
    assert state.cursors == {"a": 2} and state.cursor_offsets == {"a": 100}
    assert frame_ids(conn) == [3, 4, 5]  # the frame sent in part stays
    tx(conn, lambda c: store.advance_cursor(c, "a", 3, T0, ("a",)))
    state = store.load_state(conn)
    assert state.cursors == {"a": 3} and state.cursor_offsets == {}
    assert frame_ids(conn) == [4, 5]


def test_a_live_lane_keeps_its_offset_until_it_closes(conn: sqlite3.Connection) -> None:
    tx(conn, lambda c: store.set_live_lane(c, "a", 0, (10, 12), T0, 7))
    state = store.load_state(conn)
    assert state.live_lanes == {"a": (10, 12)} and state.live_offsets == {"a": 7}
    tx(conn, lambda c: store.set_live_lane(c, "a", 0, None, T0, 7))
    state = store.load_state(conn)
    assert state.live_lanes == {} and state.live_offsets == {}


def test_drop_unsent_skips_kept_frames_and_counts_only_frames_someone_misses(
        conn: sqlite3.Connection) -> None:
    write(conn, BatchWrite(frames=[frame(i, size=10) for i in range(1, 11)]))
    tx(conn, lambda c: store.advance_cursor(c, "a", 3, T0, ("a", "b")))  # a has 1..3
    tx(conn, lambda c: store.advance_cursor(c, "b", 0, T0, ("a", "b")))
    # frames 1..4 are on the wire for b: the next-oldest go instead
    dropped = tx(conn, lambda c: store.drop_unsent(c, 25, [(0, 4)], ("a", "b")))
    assert dropped.ids == (5, 6, 7) and dropped.bytes == 30
    assert dropped.dropped == 3 and dropped.missed == {"a": 3, "b": 3}
    assert frame_ids(conn) == [1, 2, 3, 4, 8, 9, 10]
    assert conn.execute("SELECT value FROM counters WHERE name = 'dropped_buffer_full'"
                        ).fetchall() == [(3,)]


def test_a_frame_every_endpoint_had_is_deleted_but_not_counted(
        conn: sqlite3.Connection) -> None:
    write(conn, BatchWrite(frames=[frame(i, size=10) for i in range(1, 6)]))
    # a's live lane sent 1..2 ahead of its cursor; b took 1..2 the normal way
    tx(conn, lambda c: store.set_live_lane(c, "a", 0, (0, 2), T0))
    tx(conn, lambda c: store.advance_cursor(c, "b", 2, T0, ("a", "b")))
    dropped = tx(conn, lambda c: store.drop_unsent(c, 30, [], ("a", "b")))
    assert dropped.ids == (1, 2, 3)
    assert dropped.dropped == 1 and dropped.missed == {"a": 1, "b": 1}  # only frame 3
