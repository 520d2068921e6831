"""gateway.buffer.store on real SQLite files: the buffer's SQL, statement by statement."""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.buffer import store
from gateway.buffer.db import Database, apply_migrations, connect
from gateway.buffer.store import KIND_BIRTH, KIND_TELEMETRY, BatchWrite, FrameRow
from gateway.errors import StoreError
from gateway.fleet import queries

T = TypeVar("T")
T0 = 1_700_000_000_000


def open_db(path: Path) -> sqlite3.Connection:
    conn = connect(path)
    apply_migrations(conn)
    return conn


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    connection = open_db(tmp_path / "fleetgate.db")
    yield connection
    connection.close()


def tx(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """One transaction, as Database.write runs it."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


def frame(frame_id: int, size: int = 10, *, device: str = "d1", boot: int = 1,
          kind: int = KIND_TELEMETRY) -> tuple[int, int, str, int, int | None, int, bytes]:
    seq = None if kind == KIND_BIRTH else frame_id
    return (frame_id, kind, device, boot, seq, T0 + frame_id, bytes([frame_id % 256]) * size)


def write(conn: sqlite3.Connection, batch: BatchWrite) -> None:
    return tx(conn, lambda c: store.write_batch(c, batch))


def frame_ids(conn: sqlite3.Connection) -> list[int]:
    return [row[0] for row in conn.execute("SELECT id FROM frames ORDER BY id")]


# ---------------------------------------------------------------------------- round trip
def test_write_batch_and_load_state_round_trip(conn: sqlite3.Connection) -> None:
    birth_payload = b"\x81\xa4boot\x01"
    write(conn, BatchWrite(
        frames=[frame(1, 5, kind=KIND_BIRTH), frame(2, 7), frame(3, 11)],
        births=[("d1", 1, T0, birth_payload, 0)],
        held=[("d2", 9, 4, T0 + 4, b"held-a"), ("d2", 9, 5, T0 + 5, b"held-bb")],
        ledger=[("d1", 1, "2-4", T0, None)],
        quarantine=[(T0, "fleet/x/telemetry", "x", "decode", "bad msgpack", b"\xc1", 1)],
        counters={"duplicates": 3},
    ))
    state = store.load_state(conn)
    assert state.next_frame_id == 4
    assert state.births == [("d1", 1, T0, birth_payload, 0)]
    assert state.ledger == [("d1", 1, "2-4", None)]
    assert state.held == [("d2", 9, 4, T0 + 4, b"held-a"), ("d2", 9, 5, T0 + 5, b"held-bb")]
    assert state.cursors == {}
    assert state.devices == []
    assert state.buffer_frames == 3
    assert state.buffer_bytes == 5 + 7 + 11 + len(b"held-a") + len(b"held-bb")
    assert state.counters == {"duplicates": 3}
    assert store.fetch_frames(conn, 0, 10) == [
        FrameRow(1, KIND_BIRTH, "d1", 1, None, T0 + 1, b"\x01" * 5),
        FrameRow(2, KIND_TELEMETRY, "d1", 1, 2, T0 + 2, b"\x02" * 7),
        FrameRow(3, KIND_TELEMETRY, "d1", 1, 3, T0 + 3, b"\x03" * 11),
    ]
    rows = queries.quarantine_rows(conn)
    assert rows == [{"id": 1, "received_ms": T0, "topic": "fleet/x/telemetry", "device_id": "x",
                     "reason": "decode", "detail": "bad msgpack", "size": 1}]


def test_empty_database_state(conn: sqlite3.Connection) -> None:
    state = store.load_state(conn)
    assert state.next_frame_id == 1
    assert (state.buffer_frames, state.buffer_bytes) == (0, 0)
    assert state.births == state.ledger == state.held == []
    assert state.counters == {} and state.cursors == {}


def test_later_batches_replace_births_and_ledger_rows_and_add_counters(
        conn: sqlite3.Connection) -> None:
    write(conn, BatchWrite(births=[("d1", 1, T0, b"old", 0)], ledger=[("d1", 1, "0-5", T0, None)],
                           counters={"dup": 2, "other": 1}))
    write(conn, BatchWrite(births=[("d1", 1, T0 + 1, b"new", 0)],
                           ledger=[("d1", 1, "0-9", T0 + 1, None)], counters={"dup": 5}))
    state = store.load_state(conn)
    assert state.births == [("d1", 1, T0 + 1, b"new", 0)]
    assert state.ledger == [("d1", 1, "0-9", None)]
    assert state.counters == {"dup": 7, "other": 1}


def test_released_held_frames_are_deleted_but_new_ones_of_that_boot_kept(
        conn: sqlite3.Connection) -> None:
    write(conn, BatchWrite(held=[("d1", 1, 0, T0, b"a"), ("d1", 1, 1, T0, b"b"),
                                 ("d1", 2, 0, T0, b"c"), ("d2", 1, 0, T0, b"d")]))
    # The same batch releases boot 1 of d1 (its birth came) and holds a later frame of it.
    write(conn, BatchWrite(frames=[frame(1), frame(2)], released=[("d1", 1)],
                           held=[("d1", 1, 7, T0, b"late")]))
    held = store.load_state(conn).held
    assert sorted((d, b, s) for d, b, s, _, _ in held) == [("d1", 1, 7), ("d1", 2, 0),
                                                            ("d2", 1, 0)]


def test_devices_checkpoint_is_loaded_back(conn: sqlite3.Connection) -> None:
    row = ("d1", "esp32-s3", "2.1.0", 5, 1000, '{"site":"lab"}', T0, T0 + 9, 42, 1,
           '[["temp",[],41.5,1]]', "online", T0, '{"frames":3}')
    tx(conn, lambda c: store.checkpoint_devices(c, [row]))
    tx(conn, lambda c: store.checkpoint_devices(
        c, [(*row[:8], 43, 0, row[10], "offline", T0 + 20, row[13])]))
    (device,) = store.load_state(conn).devices
    assert dict(device) == {"device_id": "d1", "platform": "esp32-s3", "firmware": "2.1.0",
                            "boot": 5, "interval_ms": 1000, "labels": '{"site":"lab"}',
                            "first_seen_ms": T0, "last_seen_ms": T0 + 9, "last_seq": 43,
                            "online": 0, "latest": '[["temp",[],41.5,1]]',
                            "state": "offline", "state_since_ms": T0 + 20,
                            "stats": '{"frames":3}'}
    assert conn.row_factory is None  # load_state leaves the connection as it found it


def test_dead_letters_and_table_counts(conn: sqlite3.Connection) -> None:
    rows = [("http://prom/api/v1/write", 7, T0, 400, f"out of order {i}", f"up{{}} {i}",
             b"entry") for i in range(5)]
    tx(conn, lambda c: store.add_dead_letters(c, rows))
    newest = queries.dead_letter_rows(conn, limit=2)
    assert [r["reason"] for r in newest] == ["out of order 4", "out of order 3"]
    assert newest[0] == {"id": 5, "endpoint": "http://prom/api/v1/write", "frame_id": 7,
                         "created_ms": T0, "status": 400, "reason": "out of order 4",
                         "series": "up{} 4"}
    counts = queries.table_counts(conn)
    assert counts["dead_letters"] == 5
    assert counts["frames"] == 0


def test_fetch_frames_and_oldest_unsent(conn: sqlite3.Connection) -> None:
    write(conn, BatchWrite(frames=[frame(i) for i in range(1, 8)]))
    assert [r.id for r in store.fetch_frames(conn, 2, 3)] == [3, 4, 5]
    assert store.fetch_frames(conn, 7, 10) == []
    assert store.oldest_unsent_ms(conn, 4) == T0 + 5
    assert store.oldest_unsent_ms(conn, 7) is None


# ---------------------------------------------------------------------------- frame ids
def test_frame_ids_never_go_back_after_the_buffer_empties(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    conn = open_db(path)
    write(conn, BatchWrite(frames=[frame(1), frame(2), frame(3)]))
    assert tx(conn, lambda c: store.delete_frames_upto(c, 3)) == (3, 30)
    assert store.load_state(conn).next_frame_id == 4
    conn.close()
    conn = open_db(path)  # and across a restart
    try:
        state = store.load_state(conn)
        assert state.next_frame_id == 4
        assert state.buffer_frames == 0
        write(conn, BatchWrite(frames=[frame(4)]))
        tx(conn, lambda c: store.drop_unsent(c, 1, (), ()))
        assert store.load_state(conn).next_frame_id == 5
    finally:
        conn.close()


# ---------------------------------------------------------------------------- cursors
A = "http://prom:9090/api/v1/write"
B = "http://vm:8428/api/v1/write"


def test_advance_cursor_deletes_only_frames_every_endpoint_passed(
        conn: sqlite3.Connection) -> None:
    sizes = {i: 10 * i for i in range(1, 11)}
    write(conn, BatchWrite(frames=[frame(i, sizes[i]) for i in sizes]))

    def advance(endpoint: str, frame_id: int) -> tuple[int, int]:
        return tx(conn, lambda c: store.advance_cursor(c, endpoint, frame_id, T0, [A, B]))

    assert advance(A, 6) == (0, 0)  # B has taken nothing yet: it holds everything
    assert frame_ids(conn) == list(range(1, 11))
    assert advance(B, 3) == (3, sizes[1] + sizes[2] + sizes[3])
    assert frame_ids(conn) == list(range(4, 11))
    assert advance(A, 2) == (0, 0)  # a cursor never moves back
    assert store.load_state(conn).cursors == {A: 6, B: 3}
    assert advance(B, 9) == (3, sizes[4] + sizes[5] + sizes[6])  # now A (6) is the laggard
    assert frame_ids(conn) == list(range(7, 11))
    assert advance(A, 10) == (3, sizes[7] + sizes[8] + sizes[9])
    assert frame_ids(conn) == [10]
    assert store.load_state(conn).buffer_bytes == sizes[10]


def test_cursor_of_a_removed_endpoint_does_not_hold_frames(conn: sqlite3.Connection) -> None:
    write(conn, BatchWrite(frames=[frame(i) for i in range(1, 6)]))
    tx(conn, lambda c: store.advance_cursor(c, B, 1, T0, [A, B]))
    # B was removed from the configuration: only A counts now.
    assert tx(conn, lambda c: store.advance_cursor(c, A, 4, T0, [A])) == (4, 40)
    assert frame_ids(conn) == [5]


# ---------------------------------------------------------------------------- drop_oldest
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(min_value=1, max_value=500), max_size=30),
       need=st.integers(min_value=1, max_value=8000))
def test_drop_oldest_frees_at_least_the_bytes_asked_with_the_oldest_frames(
        sizes: list[int], need: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        conn = open_db(Path(directory) / "f.db")
        try:
            first_id = 5  # ids need not start at 1
            ids = list(range(first_id, first_id + len(sizes)))
            write(conn, BatchWrite(frames=[frame(i, s) for i, s in zip(ids, sizes, strict=True)]))
            drop = tx(conn, lambda c: store.drop_unsent(c, need, (), ()))
            count, freed = len(drop.ids), drop.bytes
            last_id = drop.ids[-1] if drop.ids else 0
            total = sum(sizes)
            if total >= need:
                assert freed >= need
                # exactly the oldest, and no more than needed: without the last one it's short
                assert sum(sizes[:count - 1]) < need
            else:
                assert (count, freed) == (len(sizes), total)  # everything goes, still short
            assert freed == sum(sizes[:count])
            assert last_id == (ids[count - 1] if count else 0)
            assert frame_ids(conn) == ids[count:]
        finally:
            conn.close()


def test_nothing_to_drop_counts_nothing(conn: sqlite3.Connection) -> None:
    assert tx(conn, lambda c: store.drop_unsent(c, 100, (), ())).ids == ()
    assert store.load_state(conn).counters == {}


# ---------------------------------------------------------------------------- quarantine
def test_quarantine_keeps_only_the_newest_rows(conn: sqlite3.Connection,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "QUARANTINE_KEEP_ROWS", 3)

    def q(i: int) -> tuple[int, str, str | None, str, str, bytes, int]:
        return (T0 + i, f"fleet/d{i}/telemetry", f"d{i}", "schema", f"detail {i}", b"x" * i, i)

    write(conn, BatchWrite(quarantine=[q(1), q(2)]))
    assert [r["device_id"] for r in queries.quarantine_rows(conn)] == ["d2", "d1"]
    write(conn, BatchWrite(quarantine=[q(3), q(4)]))
    assert [r["device_id"] for r in queries.quarantine_rows(conn)] == ["d4", "d3", "d2"]
    write(conn, BatchWrite(quarantine=[q(i) for i in range(5, 12)]))  # more than the cap at once
    rows = queries.quarantine_rows(conn)
    assert [r["device_id"] for r in rows] == ["d11", "d10", "d9"]
    assert rows[0]["size"] == 11
    assert queries.table_counts(conn)["quarantine"] == 3
    assert [r["device_id"] for r in queries.quarantine_rows(conn, limit=1)] == ["d11"]


# ---------------------------------------------------------------------------- via Database
def test_a_failing_batch_leaves_nothing_behind(tmp_path: Path) -> None:
    async def body() -> None:
        database = Database(tmp_path / "f.db")
        await database.open()
        try:
            await database.write(lambda c: store.write_batch(c, BatchWrite(frames=[frame(1)])))
            # A quarantine row without its NOT NULL topic fails the batch late: its frames,
            # births, held and ledger rows were already written.
            bad = BatchWrite(frames=[frame(2)], births=[("d9", 1, T0, b"b", 0)],
                             held=[("d8", 1, 0, T0, b"h")], ledger=[("d9", 1, "0-1", T0, None)],
                             counters={"dup": 1},
                             quarantine=[(T0, None, None, "r", "d", b"p", 1)])  # type: ignore[list-item]
            with pytest.raises(StoreError):
                await database.write(lambda c: store.write_batch(c, bad))
            state = await database.read(store.load_state)
            assert (state.buffer_frames, state.births, state.ledger, state.held,
                    state.counters) == (1, [], [], [], {})
            assert await database.read(queries.quarantine_rows) == []
            assert await database.read(lambda c: store.fetch_frames(c, 0, 10)) == [
                FrameRow(*frame(1))]
        finally:
            await database.close()

    asyncio.run(body())


# ---------------------------------------------------------------------------- dedup pruning
DAY_MS = 86_400_000


def device_row(device_id: str, boot: int) -> tuple[object, ...]:
    return (device_id, "esp32", "1.0", boot, 1000, "{}", T0, T0, 0, 1, "[]", "online", T0, "{}")


def test_prune_forgets_only_past_boots_untouched_since_the_cutoff(
        conn: sqlite3.Connection) -> None:
    old, recent = T0 - 40 * DAY_MS, T0 - 1 * DAY_MS
    tx(conn, lambda c: store.checkpoint_devices(c, [device_row("d1", 3), device_row("d2", 7)]))
    write(conn, BatchWrite(
        births=[("d1", 1, old, b"b1", 0), ("d1", 2, recent, b"b2", 0), ("d1", 3, old, b"b3", 0),
                ("d2", 7, old, b"b7", 0)],
        ledger=[("d1", 1, "0-9", old, None), ("d1", 2, "0-9", recent, None),
                ("d1", 3, "0-9", old, None), ("d2", 7, "0-9", old, None)]))
    ledger, births, held = tx(conn, lambda c: store.prune_dedup_state(c, T0 - 30 * DAY_MS))
    # d1 boot 1: past and stale -> forgotten. d1 boot 2: past but recent -> kept.
    # d1 boot 3 and d2 boot 7: the devices' current boots -> kept however old.
    assert sorted(ledger) == [("d1", 1)]
    assert sorted(births) == [("d1", 1)]
    assert held == 0
    state = store.load_state(conn)
    assert sorted((d, b) for d, b, *_ in state.ledger) == [("d1", 2), ("d1", 3), ("d2", 7)]
    assert sorted((d, b) for d, b, *_ in state.births) == [("d1", 2), ("d1", 3), ("d2", 7)]


def test_prune_drops_held_frames_that_waited_too_long_and_counts_them(
        conn: sqlite3.Connection) -> None:
    cutoff = T0 - 30 * DAY_MS
    write(conn, BatchWrite(held=[("d1", 5, 0, cutoff - 1, b"aa"), ("d1", 5, 1, cutoff, b"bb"),
                                 ("d2", 1, 0, cutoff - 5, b"cc")]))
    _, _, held = tx(conn, lambda c: store.prune_dedup_state(c, cutoff))
    assert held == 2
    state = store.load_state(conn)
    assert [(d, b, s) for d, b, s, _, _ in state.held] == [("d1", 5, 1)]
    assert state.counters == {"dropped_held_without_birth": 2}
    assert state.buffer_bytes == 2


def test_prune_keeps_the_birth_of_a_boot_whose_frames_are_still_buffered(
        conn: sqlite3.Connection) -> None:
    # A device ran boot 1 for 40 days, then rebooted while an endpoint was down: boot 1's last
    # frames are still in the buffer. A forwarder that reads them back from SQLite needs boot
    # 1's birth to decode them (forwarder._entries_for); deleting it turns every one of them
    # into fleetgate_frames_dropped_total{reason="undecodable_stored"}.
    old = T0 - 40 * DAY_MS
    tx(conn, lambda c: store.checkpoint_devices(c, [device_row("d1", 2)]))
    write(conn, BatchWrite(frames=[frame(1, device="d1", boot=1)],
                           births=[("d1", 1, old, b"birth of boot 1", 0)],
                           ledger=[("d1", 1, "0-2", old, None)]))
    tx(conn, lambda c: store.prune_dedup_state(c, T0 - 30 * DAY_MS))
    assert ("d1", 1, old, b"birth of boot 1", 0) in store.load_state(conn).births
