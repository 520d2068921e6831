"""gateway.buffer.recovery on real SQLite files damaged in known ways: what is readable is salvaged
exactly, what is not is counted, the damaged files are kept byte-identical, and the gateway's
own open succeeds afterwards.

Ground truth for "readable": the frames table's leaf pages (from dbstat) and the row ids each
one holds (parsed from the page bytes), so every expectation is computed, not guessed.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import random
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.buffer import recovery, salvage, store
from gateway.buffer.db import Database, apply_migrations, connect
from gateway.buffer.recovery import Recovery
from gateway.pipeline.dedup import decode_ranges

EP = "http://receiver/api/v1/write"
DEVICES = 20
TELEMETRY = 3000
CURSOR = 10  # frames 1..10 were sent and deleted
PAGE = 4096
TABLES = ("frames", "held", "births", "ledger", "cursors", "devices", "quarantine",
          "dead_letters", "counters")


@dataclass
class Built:
    path: Path
    rows: dict[str, set[tuple[object, ...]]]  # table -> every row before the damage
    frame_leaves: list[int]  # page numbers of the frames table's leaves, in key order
    ids_on: dict[int, set[int]]  # leaf page -> frame ids on it
    sequence: int


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for i in range(9):
        byte = data[pos + i]
        if i == 8:
            return (value << 8) | byte, pos + 9
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, pos + i + 1
    raise AssertionError("unreachable")


def _leaf_rowids(data: bytes, pageno: int) -> set[int]:
    """Row ids of the cells on a table leaf page (SQLite file format, section 1.6)."""
    base = (pageno - 1) * PAGE
    header = base + (100 if pageno == 1 else 0)
    assert data[header] == 0x0D, f"page {pageno} is not a table leaf"
    cells = int.from_bytes(data[header + 3:header + 5], "big")
    ids = set()
    for k in range(cells):
        pointer = int.from_bytes(data[header + 8 + 2 * k:header + 10 + 2 * k], "big")
        _size, pos = _varint(data, base + pointer)
        rowid, _ = _varint(data, pos)
        ids.add(rowid)
    return ids


def rows_of(path: Path, table: str) -> set[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return set(conn.execute(f"SELECT * FROM {table}").fetchall())
    finally:
        conn.close()


def build(tmp_path: Path) -> Built:
    path = tmp_path / "data" / "fleetgate.db"
    conn = connect(path)
    apply_migrations(conn)
    rng = random.Random(7)
    devices = [f"dev-{i:04d}" for i in range(DEVICES)]
    frames: list[tuple[int, int, str, int, int | None, int, bytes]] = [
        (i + 1, store.KIND_BIRTH, d, 7, None, 1000 + i, b"birth-" + d.encode())
        for i, d in enumerate(devices)]
    for n in range(TELEMETRY):
        frame_id = DEVICES + n + 1
        frames.append((frame_id, store.KIND_TELEMETRY, devices[n % DEVICES], 7, n // DEVICES,
                       2000 + n, rng.randbytes(300)))
    seqs = TELEMETRY // DEVICES
    conn.execute("BEGIN")
    store.write_batch(conn, store.BatchWrite(
        frames=frames,
        births=[(d, 7, 1000, b"birth-" + d.encode(), 0) for d in devices],
        held=[("dev-late", 3, s, 5000 + s, rng.randbytes(50)) for s in range(10)],
        ledger=[(d, 7, f"0-{seqs}", 9, None) for d in devices] + [("dev-late", 3, "0-10", 9, None)],
        quarantine=[(6000 + k, "fleet/x/telemetry", "x", "wrong type", "detail", b"\x01", 1)
                    for k in range(30)],
        counters={"dropped_buffer_full": 4}))
    store.add_dead_letters(conn, [(EP, 100 + k, 7000, 400, "refused", "s", b"e")
                                  for k in range(10)])
    store.checkpoint_devices(conn, [(d, "esp32", "2.1", 7, 1000, "{}", 1, 2, seqs - 1, 1, "[]",
                                     "online", 1, "{}")
                                    for d in devices])
    store.advance_cursor(conn, EP, CURSOR, 1, [EP])
    conn.execute("COMMIT")
    leaves = [p for (p,) in conn.execute(
        "SELECT pageno FROM dbstat WHERE name = 'frames' AND pagetype = 'leaf' ORDER BY path")]
    sequence = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'frames'").fetchone()[0]
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = path.read_bytes()
    rows = {t: rows_of(path, t) for t in TABLES}
    return Built(path, rows, leaves, {p: _leaf_rowids(data, p) for p in leaves}, sequence)


@pytest.fixture
def built(tmp_path: Path) -> Built:
    return build(tmp_path)


def run_recovery(path: Path) -> Recovery | None:
    return recovery.recover(path, migrate=apply_migrations, endpoints=[EP])


def gateway_open(path: Path) -> store.StoredState:
    """What the gateway does at start: Database.open (check, recover, migrate), load_state."""
    async def main() -> store.StoredState:
        db = Database(path, endpoints=[EP])
        await db.open()
        try:
            return await db.read(store.load_state)
        finally:
            await db.close()

    return asyncio.run(main())


def quarantined(path: Path) -> Path:
    entries = list((path.parent / "quarantine").iterdir())
    assert len(entries) == 1
    return entries[0]


def frame_ids(path: Path) -> set[int]:
    return {int(str(r[0])) for r in rows_of(path, "frames")}


def all_frame_ids(built: Built) -> set[int]:
    return {int(str(r[0])) for r in built.rows["frames"]}


def check_salvage(built: Built, damaged: dict[str, bytes], result: Recovery | None,
                  readable: set[int]) -> None:
    """The common assertions after any damage."""
    assert result is not None
    path = built.path
    entry = quarantined(path)
    for name, content in damaged.items():  # the evidence, byte for byte
        assert (entry / name).read_bytes() == content
    assert sorted(result.files) == sorted(damaged)
    report = json.loads((entry / recovery.REPORT_NAME).read_text())
    assert report["problem"] == result.problem and report["lost_frames"] == result.lost_frames
    assert not (entry / ".work").exists()
    salvaged = frame_ids(path)
    assert salvaged == readable
    # every salvaged row is exactly a row that was there, nothing invented (ledger and births
    # may also be rebuilt from frames, counters gain the recovery's own)
    for table in ("frames", "held", "cursors", "devices", "quarantine", "dead_letters"):
        assert rows_of(path, table) <= built.rows[table], table
    original = all_frame_ids(built)
    assert result.tables["frames"].salvaged == len(salvaged)
    assert result.lost_frames == len(original - salvaged)
    assert result.tables["frames"].unreadable == result.lost_frames
    conn = sqlite3.connect(path)
    seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'frames'").fetchone()[0]
    counters = dict(conn.execute("SELECT name, value FROM counters").fetchall())
    conn.close()
    assert seq >= built.sequence
    assert counters[recovery.COUNTER_RECOVERIES] == 1
    assert counters.get(recovery.COUNTER_UNREADABLE_FRAMES, 0) == result.lost_frames
    state = gateway_open(path)  # the gateway-side open succeeds on the result
    assert state.next_frame_id == built.sequence + 1
    assert state.buffer_frames == len(salvaged)


def ids_on_pages(built: Built, pages: set[int]) -> set[int]:
    return set().union(*(built.ids_on[p] for p in built.frame_leaves if p in pages))


# ---------------------------------------------------------------------------- healthy
def test_healthy_file_is_left_untouched_and_not_copied(built: Built) -> None:
    before = built.path.read_bytes()
    mtime = built.path.stat().st_mtime_ns
    assert run_recovery(built.path) is None
    assert built.path.read_bytes() == before and built.path.stat().st_mtime_ns == mtime
    assert not (built.path.parent / "quarantine").exists()
    assert gateway_open(built.path).buffer_frames == len(built.rows["frames"])


def test_missing_file_is_not_damage(tmp_path: Path) -> None:
    path = tmp_path / "fleetgate.db"
    assert run_recovery(path) is None
    assert not path.exists() and list(tmp_path.iterdir()) == []
    assert gateway_open(path).next_frame_id == 1


def test_garbage_shm_is_harmless(built: Built) -> None:
    shm = built.path.with_name("fleetgate.db-shm")
    shm.write_bytes(os.urandom(32768))
    assert run_recovery(built.path) is None
    assert gateway_open(built.path).buffer_frames == len(built.rows["frames"])


# ---------------------------------------------------------------------------- damage
def test_truncated_to_half(built: Built) -> None:
    data = built.path.read_bytes()
    cut = (len(data) // 2) // PAGE * PAGE
    built.path.write_bytes(data[:cut])
    result = run_recovery(built.path)
    whole = {p for p in built.frame_leaves if p * PAGE <= cut}
    check_salvage(built, {"fleetgate.db": data[:cut]}, result, ids_on_pages(built, whole))
    assert result is not None and result.lost_frames > 0
    assert "truncated" in result.problem


def test_truncated_mid_page(built: Built) -> None:
    data = built.path.read_bytes()
    cut = (len(data) // 2) // PAGE * PAGE + 1000
    built.path.write_bytes(data[:cut])
    result = run_recovery(built.path)
    whole = {p for p in built.frame_leaves if p * PAGE <= cut}
    # the partial page is not read: its missing tail would come back as zeroed payloads
    check_salvage(built, {"fleetgate.db": data[:cut]}, result, ids_on_pages(built, whole))
    assert result is not None and any("mid-page" in n for n in result.notes)


def test_random_pages_overwritten_in_the_middle(built: Built) -> None:
    data = bytearray(built.path.read_bytes())
    middle = len(built.frame_leaves) // 2
    hit = set(built.frame_leaves[middle:middle + 3]) | {built.frame_leaves[middle + 10]}
    rng = random.Random(1)
    for page in hit:
        data[(page - 1) * PAGE:page * PAGE] = rng.randbytes(PAGE)
    built.path.write_bytes(bytes(data))
    result = run_recovery(built.path)
    readable = ids_on_pages(built, set(built.frame_leaves) - hit)
    check_salvage(built, {"fleetgate.db": bytes(data)}, result, readable)
    assert result is not None
    assert result.lost_frames == len(ids_on_pages(built, hit))  # exactly the rows on those pages
    lost_ids = {i for lo, hi in result.lost_frame_ids for i in range(lo, hi + 1)}
    assert lost_ids == ids_on_pages(built, hit)
    for table in ("births", "ledger", "cursors", "devices", "held", "quarantine", "dead_letters"):
        assert rows_of(built.path, table) == built.rows[table], table


def test_zeroed_header_is_read_with_a_rebuilt_one(built: Built) -> None:
    data = built.path.read_bytes()
    damaged = bytes(100) + data[100:]
    built.path.write_bytes(damaged)
    result = run_recovery(built.path)
    check_salvage(built, {"fleetgate.db": damaged}, result,
                  all_frame_ids(built))
    assert result is not None and result.lost_frames == 0
    assert result.problem == "file is not a database"
    assert any("rebuilt header" in n for n in result.notes)
    for table in TABLES:
        if table != "counters":
            assert rows_of(built.path, table) == built.rows[table], table


def test_zero_length_file(built: Built) -> None:
    built.path.write_bytes(b"")
    result = run_recovery(built.path)
    assert result is not None and "zero length" in result.problem
    assert (quarantined(built.path) / "fleetgate.db").read_bytes() == b""
    assert result.tables == {} and not result.salvage_error
    assert gateway_open(built.path).next_frame_id == 1


def test_garbage_wal_is_set_aside_and_the_database_salvaged(built: Built) -> None:
    data = built.path.read_bytes()
    wal = os.urandom(10_000)
    built.path.with_name("fleetgate.db-wal").write_bytes(wal)
    result = run_recovery(built.path)
    check_salvage(built, {"fleetgate.db": data, "fleetgate.db-wal": wal}, result,
                  all_frame_ids(built))
    assert result is not None and "write-ahead log" in result.problem


def test_wal_without_its_database(tmp_path: Path) -> None:
    path = tmp_path / "fleetgate.db"
    wal = os.urandom(5000)
    path.with_name("fleetgate.db-wal").write_bytes(wal)
    result = run_recovery(path)
    assert result is not None and "without its database" in result.problem
    assert (quarantined(path) / "fleetgate.db-wal").read_bytes() == wal
    assert not path.with_name("fleetgate.db-wal").exists()
    assert gateway_open(path).next_frame_id == 1


def test_valid_wal_of_a_killed_gateway_is_read_with_its_commits(tmp_path: Path) -> None:
    """Main file truncated, -wal intact (kill -9 before a checkpoint): the WAL's commits are
    salvaged too, and the -wal is kept as evidence unchanged."""
    path = tmp_path / "live" / "fleetgate.db"
    conn = connect(path)
    apply_migrations(conn)

    def add(first: int, last: int) -> None:
        conn.execute("BEGIN")
        store.write_batch(conn, store.BatchWrite(frames=[
            (i, store.KIND_TELEMETRY, "d", 1, i, i, os.urandom(300)) for i in range(first, last)]))
        conn.execute("COMMIT")

    add(1, 2001)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    add(2001, 2201)  # only in the -wal, as after kill -9
    main = path.read_bytes()
    wal = path.with_name("fleetgate.db-wal").read_bytes()
    conn.close()
    damaged = main[:len(main) // 2 // PAGE * PAGE]
    target = tmp_path / "data" / "fleetgate.db"
    target.parent.mkdir()
    target.write_bytes(damaged)
    target.with_name("fleetgate.db-wal").write_bytes(wal)
    result = run_recovery(target)
    assert result is not None
    salvaged = frame_ids(target)
    assert set(range(2001, 2201)) <= salvaged
    assert result.lost_frames == 2200 - len(salvaged) > 0
    entry = quarantined(target)
    assert (entry / "fleetgate.db-wal").read_bytes() == wal
    assert (entry / "fleetgate.db").read_bytes() == damaged
    assert gateway_open(target).next_frame_id == 2201


def _overwrite_root(built: Built, table: str) -> None:
    conn = sqlite3.connect(built.path)
    (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()
    conn.close()
    data = bytearray(built.path.read_bytes())
    data[(root - 1) * PAGE:root * PAGE] = random.Random(3).randbytes(PAGE)
    built.path.write_bytes(bytes(data))


def test_lost_ledger_is_rebuilt_from_salvaged_frames(built: Built) -> None:
    """Dedup state must survive: a replay of a salvaged frame is still a duplicate."""
    _overwrite_root(built, "ledger")
    result = run_recovery(built.path)
    assert result is not None and not result.tables["ledger"].complete
    assert result.lost_frames == 0
    conn = sqlite3.connect(built.path)
    ledger = {(d, b): decode_ranges(r) for d, b, r in
              conn.execute("SELECT device_id, boot, ranges FROM ledger")}
    for _id, kind, device, boot, seq, _ms, _payload in conn.execute("SELECT * FROM frames"):
        if kind == store.KIND_TELEMETRY:
            assert seq in ledger[(device, boot)]
    assert all(s in ledger[("dev-late", 3)] for s in range(10))  # from the held frames
    conn.close()


def test_lost_births_are_rebuilt_from_salvaged_birth_frames(built: Built) -> None:
    _overwrite_root(built, "births")
    result = run_recovery(built.path)
    assert result is not None
    buffered_births = {(r[2], r[3]) for r in built.rows["frames"] if r[1] == store.KIND_BIRTH}
    assert buffered_births
    assert {(r[0], r[1]) for r in rows_of(built.path, "births")} == buffered_births


def test_unreadable_cursors_still_keep_ids_from_going_backwards(built: Built) -> None:
    _overwrite_root(built, "cursors")
    result = run_recovery(built.path)
    assert result is not None and rows_of(built.path, "cursors") == set()
    assert any("cursors unreadable" in n for n in result.notes)
    assert gateway_open(built.path).next_frame_id == built.sequence + 1


def test_salvage_failure_starts_empty_and_keeps_the_copy(
        built: Built, monkeypatch: pytest.MonkeyPatch) -> None:
    data = bytes(100) + built.path.read_bytes()[100:]
    built.path.write_bytes(data)

    def broken(*args: object) -> None:
        raise RuntimeError("salvage bug")

    monkeypatch.setattr(recovery, "_salvage", broken)
    result = run_recovery(built.path)
    assert result is not None and "salvage bug" in result.salvage_error
    assert (quarantined(built.path) / "fleetgate.db").read_bytes() == data
    assert gateway_open(built.path).next_frame_id == 1
    assert rows_of(built.path, "counters") == {(recovery.COUNTER_RECOVERIES, 1)}


def test_a_second_start_finds_a_healthy_file_and_reports_the_last_recovery(built: Built) -> None:
    data = built.path.read_bytes()
    built.path.write_bytes(data[:len(data) // 2])
    first = run_recovery(built.path)
    assert first is not None
    assert run_recovery(built.path) is None  # no loop: the salvaged file is healthy
    report = recovery.last_report(built.path)
    assert report is not None and report["quarantined_to"] == first.quarantined_to


def test_interrupted_salvage_leftover_is_discarded(built: Built) -> None:
    leftover = built.path.with_name("fleetgate.db.salvage")
    leftover.write_bytes(b"half-built")
    assert run_recovery(built.path) is None
    assert not leftover.exists()


def test_summary_is_one_line_naming_the_copy_and_the_losses(built: Built) -> None:
    data = bytearray(built.path.read_bytes())
    page = built.frame_leaves[len(built.frame_leaves) // 2]
    data[(page - 1) * PAGE:page * PAGE] = bytes(PAGE)
    built.path.write_bytes(bytes(data))
    result = run_recovery(built.path)
    assert result is not None
    line = result.summary()
    assert "\n" not in line and result.quarantined_to in line
    assert f"acknowledged frames lost: {len(built.ids_on[page])}" in line


@pytest.mark.parametrize("mode", ["quick", "off"])
def test_check_modes(built: Built, mode: recovery.StartupCheck) -> None:
    """'off' skips quick_check (damage inside a page goes unseen) but still catches a file
    that cannot be opened or is shorter than its header says."""
    data = bytearray(built.path.read_bytes())
    page = built.frame_leaves[len(built.frame_leaves) // 2]
    data[(page - 1) * PAGE:page * PAGE] = bytes(PAGE)
    built.path.write_bytes(bytes(data))
    found = recovery.check(built.path, mode)
    assert (found is not None) == (mode == "quick")
    built.path.write_bytes(bytes(100) + bytes(data[100:]))
    assert recovery.check(built.path, mode) == "file is not a database"
    pages = len(data) // PAGE
    built.path.write_bytes(bytes(data[:len(data) // 2 // PAGE * PAGE]))
    truncated = f"the file is truncated: {pages // 2} of {pages} pages"
    assert recovery.check(built.path, mode) == truncated
    built.path.write_bytes(bytes(data[:len(data) // 2 + 100]))
    assert "not a whole number of 4096-byte pages" in str(recovery.check(built.path, mode))


# ---------------------------------------------------------------------------- generic salvage
def test_generic_salvage_copies_a_schema_it_does_not_know(tmp_path: Path) -> None:
    """gateway.buffer.salvage knows no fleetgate table: the readable rows of any schema are
    copied exactly, an unreadable stretch of a rowid table is estimated from the ids around it,
    and the evidence is left byte for byte."""
    path = tmp_path / "other.db"
    schema = "CREATE TABLE notes (id INTEGER PRIMARY KEY, body BLOB NOT NULL)"
    conn = sqlite3.connect(path)
    conn.execute(schema)
    with conn:
        conn.executemany("INSERT INTO notes VALUES (?, ?)",
                         [(i, random.Random(i).randbytes(300)) for i in range(1, 2001)])
    leaves = [p for (p,) in conn.execute(
        "SELECT pageno FROM dbstat WHERE name = 'notes' AND pagetype = 'leaf' ORDER BY path")]
    conn.close()
    data = bytearray(path.read_bytes())
    hit = leaves[len(leaves) // 2]
    lost = _leaf_rowids(bytes(data), hit)
    data[(hit - 1) * PAGE:hit * PAGE] = bytes(PAGE)
    path.write_bytes(bytes(data))

    entry, files = salvage.set_aside(path, datetime.datetime.now(datetime.UTC),
                                     salvage.present(path))
    fresh = tmp_path / "fresh.db"
    salvage.build_fresh(fresh, lambda c: c.execute(schema))
    stats: dict[str, salvage.TableSalvage] = {}
    copied: list[int] = []

    def copy(src: sqlite3.Connection, dest: sqlite3.Connection) -> None:
        for name, table in salvage.tables(dest).items():
            salvage.copy_table(src, dest, table, stats.setdefault(name, salvage.TableSalvage()),
                               lambda row, _skipped: copied.append(row["id"]))

    notes: list[str] = []
    salvage.salvage_into(entry, path.name, fresh, notes, probe_table="notes", copy=copy)
    assert files == ["other.db"] and (entry / "other.db").read_bytes() == bytes(data)
    assert set(copied) == set(range(1, 2001)) - lost and copied == sorted(copied)
    assert {r[0] for r in rows_of(fresh, "notes")} == set(copied)
    assert stats["notes"].salvaged == len(copied) and not stats["notes"].complete
    assert stats["notes"].unreadable == len(lost)  # the ids are dense: the estimate is exact
    assert not (entry / salvage.WORK_DIR).exists()
