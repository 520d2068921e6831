"""The buffer's SQL: plain functions over a connection, run by `Database.write`/`read`.

Kept apart from the pipeline so every statement is visible in one place and testable on a real
file in tmp_path.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

KIND_TELEMETRY = 0
KIND_BIRTH = 1
# Entries the gateway made itself (stale markers, the fleet's metrics): the payload is the
# encoded remote-write TimeSeries entries, concatenated; device_id names the device or "".
KIND_ENTRIES = 2

# Newest rows kept for inspection (the counters keep the totals); payloads are cut to
# QUARANTINE_PAYLOAD_BYTES so hostile input can use at most ~160 MiB of disk here.
QUARANTINE_KEEP_ROWS = 20_000
QUARANTINE_PAYLOAD_BYTES = 8192
DEAD_LETTERS_KEEP_ROWS = 100_000  # ~150 bytes an entry: at most ~20 MiB of refused samples


@dataclass(slots=True)
class BatchWrite:
    """Everything one group commit writes, in one transaction."""

    frames: list[tuple[int, int, str, int, int | None, int, bytes]] = field(default_factory=list)
    # (device, boot, received_ms, payload, clock ahead ms measured at the boot's first birth)
    births: list[tuple[str, int, int, bytes, int]] = field(default_factory=list)
    held: list[tuple[str, int, int, int, bytes]] = field(default_factory=list)
    released: list[tuple[str, int]] = field(default_factory=list)  # (device, boot) held -> frames
    ledger: list[tuple[str, int, str, int, int | None]] = field(default_factory=list)
    boot_series: list[tuple[str, int, bytes]] = field(default_factory=list)  # new in a boot
    reopened: list[tuple[str, int]] = field(default_factory=list)  # closed boots with frames
    # (received_ms, topic, device_id, reason, detail, payload excerpt, the frame's size)
    quarantine: list[tuple[int, str, str | None, str, str, bytes, int]] = field(
        default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.frames) + len(self.held) + len(self.quarantine)


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """Where an endpoint is in the buffer: every frame up to frame_id is sent, and the first
    `offset` entries of the next frame (frame_id + 1; ignored if that frame is gone)."""

    frame_id: int
    offset: int = 0


@dataclass(frozen=True, slots=True)
class FrameRow:
    id: int
    kind: int
    device_id: str
    boot: int
    seq: int | None
    received_ms: int
    payload: bytes


@dataclass(slots=True)
class StoredState:
    next_frame_id: int
    # (device, boot, received_ms, payload, clock ahead ms or None for rows before migration 7)
    births: list[tuple[str, int, int, bytes, int | None]]
    closed_boots: list[tuple[str, int]]
    ledger: list[tuple[str, int, str, int | None]]  # (device, boot, ranges, newest ms)
    held: list[tuple[str, int, int, int, bytes]]
    cursors: dict[str, int]
    live_lanes: dict[str, tuple[int, int]]  # endpoint -> (live_from, live_upto)
    cursor_offsets: dict[str, int]  # endpoint -> entries of frame cursor + 1 already sent
    live_offsets: dict[str, int]  # endpoint -> entries of frame live_upto + 1 already sent
    devices: list[sqlite3.Row]
    buffer_frames: int
    buffer_bytes: int
    counters: dict[str, int]


def write_batch(conn: sqlite3.Connection, batch: BatchWrite) -> None:
    if batch.frames:
        insert_rows(conn, "INSERT INTO frames (id, kind, device_id, boot, seq, received_ms,"
                          " payload) VALUES ", batch.frames)
    if batch.births:
        conn.executemany(
            "INSERT OR REPLACE INTO births (device_id, boot, received_ms, payload,"
            " clock_ahead_ms) VALUES (?,?,?,?,?)",
            batch.births)
    if batch.released:
        conn.executemany("DELETE FROM held WHERE device_id = ? AND boot = ?", batch.released)
    if batch.held:
        conn.executemany(
            "INSERT INTO held (device_id, boot, seq, received_ms, payload) VALUES (?,?,?,?,?)",
            batch.held)
    if batch.ledger:
        insert_rows(conn, "INSERT OR REPLACE INTO ledger (device_id, boot, ranges, updated_ms,"
                          " newest_ms) VALUES ", batch.ledger)
    if batch.reopened:
        conn.executemany("DELETE FROM closed_boots WHERE device_id = ? AND boot = ?",
                         batch.reopened)
    if batch.boot_series:
        insert_rows(conn, "INSERT OR IGNORE INTO boot_series (device_id, boot, labels) VALUES ",
                    batch.boot_series)
    if batch.quarantine:
        conn.executemany(
            "INSERT INTO quarantine (received_ms, topic, device_id, reason, detail, payload,"
            " size) VALUES (?,?,?,?,?,?,?)", batch.quarantine)
        conn.execute(
            "DELETE FROM quarantine WHERE id <= (SELECT MAX(id) FROM quarantine) - ?",
            (QUARANTINE_KEEP_ROWS,))
    if batch.counters:
        bump_counters(conn, batch.counters)


ROWS_PER_STATEMENT = 256  # x 7 columns stays far below SQLite's 32,766 bound parameters


def insert_rows(conn: sqlite3.Connection, head: str, rows: Sequence[tuple[Any, ...]]) -> None:
    """INSERT many rows with multi-row VALUES statements instead of executemany.

    executemany steps once per row, and the sqlite3 module releases and re-takes the GIL around
    every step: with the event loop busy, the writer thread then waits for the GIL once per
    row. One statement per ROWS_PER_STATEMENT rows makes that once per statement.
    """
    width = len(rows[0])
    group = "(" + ",".join("?" * width) + ")"
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        chunk = rows[start:start + ROWS_PER_STATEMENT]
        conn.execute(head + ",".join([group] * len(chunk)),
                     [value for row in chunk for value in row])


def bump_counters(conn: sqlite3.Connection, counters: dict[str, int]) -> None:
    conn.executemany(
        "INSERT INTO counters (name, value) VALUES (?, ?)"
        " ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
        list(counters.items()))


def load_state(conn: sqlite3.Connection) -> StoredState:
    seq_row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'frames'").fetchone()
    max_row = conn.execute("SELECT MAX(id) FROM frames").fetchone()
    next_id = max(seq_row[0] if seq_row else 0, max_row[0] or 0) + 1
    frames, size = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM frames").fetchone()
    held_size = conn.execute("SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM held").fetchone()[0]
    conn.row_factory = sqlite3.Row
    try:
        devices = conn.execute("SELECT * FROM devices").fetchall()
    finally:
        conn.row_factory = None
    return StoredState(
        next_frame_id=next_id,
        births=conn.execute(
            "SELECT device_id, boot, received_ms, payload, clock_ahead_ms FROM births"
        ).fetchall(),
        closed_boots=conn.execute("SELECT device_id, boot FROM closed_boots").fetchall(),
        ledger=conn.execute("SELECT device_id, boot, ranges, newest_ms FROM ledger").fetchall(),
        held=conn.execute(
            "SELECT device_id, boot, seq, received_ms, payload FROM held ORDER BY id").fetchall(),
        cursors=dict(conn.execute("SELECT endpoint, frame_id FROM cursors").fetchall()),
        live_lanes={endpoint: (live_from, live_upto) for endpoint, live_from, live_upto
                    in conn.execute("SELECT endpoint, live_from, live_upto FROM cursors"
                                    " WHERE live_from IS NOT NULL").fetchall()},
        cursor_offsets=dict(conn.execute("SELECT endpoint, entry_offset FROM cursors"
                                         " WHERE entry_offset > 0").fetchall()),
        live_offsets=dict(conn.execute("SELECT endpoint, live_offset FROM cursors"
                                       " WHERE live_from IS NOT NULL AND live_offset > 0"
                                       ).fetchall()),
        devices=devices,
        buffer_frames=frames,
        buffer_bytes=size + held_size,
        counters=dict(conn.execute("SELECT name, value FROM counters").fetchall()),
    )


def fetch_frames(conn: sqlite3.Connection, after_id: int, limit: int) -> list[FrameRow]:
    rows = conn.execute(
        "SELECT id, kind, device_id, boot, seq, received_ms, payload FROM frames"
        " WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)).fetchall()
    return [FrameRow(*row) for row in rows]


def oldest_unsent_ms(conn: sqlite3.Connection, after_id: int) -> int | None:
    row = conn.execute(
        "SELECT received_ms FROM frames WHERE id > ? ORDER BY id LIMIT 1", (after_id,)).fetchone()
    return row[0] if row else None


def advance_cursor(conn: sqlite3.Connection, endpoint: str, frame_id: int, now_ms: int,
                   endpoints: Sequence[str], offset: int = 0) -> tuple[int, int]:
    """Move endpoint's cursor forward (never back) to Position(frame_id, offset); delete the
    frames every endpoint has passed whole.

    Returns (frames deleted, payload bytes freed)."""
    conn.execute(
        "INSERT INTO cursors (endpoint, frame_id, entry_offset, updated_ms) VALUES (?,?,?,?)"
        " ON CONFLICT(endpoint) DO UPDATE SET frame_id = excluded.frame_id,"
        " entry_offset = excluded.entry_offset, updated_ms = excluded.updated_ms"
        " WHERE (excluded.frame_id, excluded.entry_offset) > (frame_id, entry_offset)",
        (endpoint, frame_id, offset, now_ms))
    marks = ",".join("?" * len(endpoints))
    row = conn.execute(
        f"SELECT COUNT(*), MIN(frame_id) FROM cursors WHERE endpoint IN ({marks})",
        tuple(endpoints)).fetchone()
    if row[0] < len(endpoints):  # an endpoint that has taken nothing yet holds everything
        return 0, 0
    return delete_frames_upto(conn, row[1])


def set_live_lane(conn: sqlite3.Connection, endpoint: str, cursor: int,
                  live: tuple[int, int] | None, now_ms: int, live_offset: int = 0) -> None:
    """Record an endpoint's live lane (None closes it; the cursor is then advanced with
    advance_cursor in the same transaction); live_offset: entries of frame live_upto + 1 sent."""
    live_from, live_upto = live if live is not None else (None, None)
    conn.execute(
        "INSERT INTO cursors (endpoint, frame_id, updated_ms, live_from, live_upto, live_offset)"
        " VALUES (?,?,?,?,?,?) ON CONFLICT(endpoint) DO UPDATE SET"
        " live_from = excluded.live_from, live_upto = excluded.live_upto,"
        " live_offset = excluded.live_offset, updated_ms = excluded.updated_ms",
        (endpoint, cursor, now_ms, live_from, live_upto, live_offset if live else 0))


def delete_frames_upto(conn: sqlite3.Connection, frame_id: int) -> tuple[int, int]:
    count, size = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM frames WHERE id <= ?",
        (frame_id,)).fetchone()
    if count:
        conn.execute("DELETE FROM frames WHERE id <= ?", (frame_id,))
    return count, size


def _delete_ids(conn: sqlite3.Connection, ids: Sequence[int]) -> None:
    if ids and ids[-1] - ids[0] + 1 == len(ids):  # one run of ids (the common case)
        conn.execute("DELETE FROM frames WHERE id BETWEEN ? AND ?", (ids[0], ids[-1]))
    else:
        conn.executemany("DELETE FROM frames WHERE id = ?", [(i,) for i in ids])


def _pick_oldest(conn: sqlite3.Connection, need_bytes: int,
                 keep: Sequence[tuple[int, int]]) -> tuple[list[int], int]:
    ids: list[int] = []
    freed = last_id = 0
    while freed < need_bytes:
        rows = conn.execute(
            "SELECT id, LENGTH(payload) FROM frames WHERE id > ? ORDER BY id LIMIT 1000",
            (last_id,)).fetchall()
        if not rows:
            break
        for frame_id, size in rows:
            last_id = frame_id
            if any(after < frame_id <= upto for after, upto in keep):
                continue
            freed += size
            ids.append(frame_id)
            if freed >= need_bytes:
                break
    return ids, freed


@dataclass(frozen=True, slots=True)
class BufferDrop:
    """What drop_unsent deleted: frame ids, bytes, and per endpoint how many of those frames
    it had not been sent (frames every endpoint had are not counted as dropped)."""

    ids: tuple[int, ...]
    bytes: int
    dropped: int  # frames at least one endpoint had not been sent
    missed: dict[str, int]  # endpoint -> frames it had not been sent


def drop_unsent(conn: sqlite3.Connection, need_bytes: int, keep: Sequence[tuple[int, int]],
                endpoints: Sequence[str]) -> BufferDrop:
    """The drop_oldest policy: delete the oldest frames outside `keep` (frames on the wire, or
    sent in part) until need_bytes are freed; count durably the frames some endpoint misses
    (one every endpoint has had is not dropped for anyone), and say who misses how many."""
    ids, freed = _pick_oldest(conn, need_bytes, keep)
    if not ids:
        return BufferDrop((), 0, 0, {})
    _delete_ids(conn, ids)
    sent = {endpoint: (frame_id, live_from, live_upto) for endpoint, frame_id, live_from,
            live_upto in conn.execute("SELECT endpoint, frame_id, live_from, live_upto"
                                      " FROM cursors").fetchall()}
    missed: dict[str, int] = {}
    not_everywhere = set()
    for endpoint in endpoints:
        cursor, live_from, live_upto = sent.get(endpoint, (0, None, None))
        lost = [i for i in ids if i > cursor
                and not (live_from is not None and live_from < i <= live_upto)]
        not_everywhere.update(lost)
        if lost:
            missed[endpoint] = len(lost)
    if not endpoints:
        not_everywhere.update(ids)
    if not_everywhere:
        bump_counters(conn, {"dropped_buffer_full": len(not_everywhere)})
    return BufferDrop(tuple(ids), freed, len(not_everywhere), missed)


def add_dead_letters(conn: sqlite3.Connection,
                     rows: Sequence[tuple[str, int, int, int, str, str, bytes]]) -> None:
    conn.executemany(
        "INSERT INTO dead_letters (endpoint, frame_id, created_ms, status, reason, series, entry)"
        " VALUES (?,?,?,?,?,?,?)", rows)
    conn.execute("DELETE FROM dead_letters WHERE id <= (SELECT MAX(id) FROM dead_letters) - ?",
                 (DEAD_LETTERS_KEEP_ROWS,))


def checkpoint_devices(conn: sqlite3.Connection, rows: Sequence[tuple]) -> None:
    if rows:
        insert_rows(conn, "INSERT OR REPLACE INTO devices (device_id, platform, firmware, boot,"
                          " interval_ms, labels, first_seen_ms, last_seen_ms, last_seq, online,"
                          " latest, state, state_since_ms, stats) VALUES ", rows)


EVENT_COLUMNS = ("device_id", "ts_ms", "kind", "state", "previous", "boot", "previous_boot",
                 "reason")


def insert_events(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> int:
    """Insert event rows (EVENT_COLUMNS order) with consecutive ids; return the first id."""
    first = (conn.execute("SELECT COALESCE(MAX(id), 0) FROM device_events").fetchone()[0]) + 1
    if rows:  # multi-row statements: a fleet gone dark writes thousands at a time
        insert_rows(conn, f"INSERT INTO device_events (id, {', '.join(EVENT_COLUMNS)}) VALUES ",
                    [(first + i, *row) for i, row in enumerate(rows)])
    return first


def prune_events(conn: sqlite3.Connection, before_ms: int) -> int:
    return conn.execute("DELETE FROM device_events WHERE ts_ms < ?", (before_ms,)).rowcount


def forget_device(conn: sqlite3.Connection, device_id: str) -> None:
    conn.execute("DELETE FROM devices WHERE device_id = ?", (device_id,))
    conn.execute("DELETE FROM device_events WHERE device_id = ?", (device_id,))


def dead_letters_to_replay(conn: sqlite3.Connection, endpoint: str | None,
                           limit: int) -> list[tuple[int, str, bytes]]:
    """(id, endpoint, entry) of the oldest dead letters, of one endpoint or all."""
    if endpoint is None:
        return conn.execute("SELECT id, endpoint, entry FROM dead_letters ORDER BY id LIMIT ?",
                            (limit,)).fetchall()
    return conn.execute("SELECT id, endpoint, entry FROM dead_letters WHERE endpoint = ?"
                        " ORDER BY id LIMIT ?", (endpoint, limit)).fetchall()


def settle_dead_letters(conn: sqlite3.Connection, delivered: Sequence[int],
                        refused: Sequence[tuple[int, str, int]]) -> int:
    """Delete the replayed dead letters an endpoint took; record the new refusal of the
    others as (status, reason, id). Returns how many dead letters remain."""
    conn.executemany("DELETE FROM dead_letters WHERE id = ?", [(i,) for i in delivered])
    conn.executemany("UPDATE dead_letters SET status = ?, reason = ? WHERE id = ?", refused)
    return conn.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]


def prune_dedup_state(conn: sqlite3.Connection, before_ms: int
                      ) -> tuple[list[tuple[str, int]], list[tuple[str, int]], int]:
    """Forget ledger entries and births of past boots not touched since before_ms, and held
    frames that waited that long for a birth. The device's current boot is always kept.

    Returns (ledger keys removed, birth keys removed, held frames dropped)."""
    current = "(SELECT boot FROM devices d WHERE d.device_id = {t}.device_id)"
    ledger = conn.execute(
        f"DELETE FROM ledger WHERE updated_ms < ? AND boot IS NOT {current.format(t='ledger')}"
        " RETURNING device_id, boot", (before_ms,)).fetchall()
    conn.executemany("DELETE FROM boot_series WHERE device_id = ? AND boot = ?", ledger)
    conn.executemany("DELETE FROM closed_boots WHERE device_id = ? AND boot = ?", ledger)
    candidates = conn.execute(
        f"SELECT device_id, boot FROM births WHERE received_ms < ?"
        f" AND boot IS NOT {current.format(t='births')}", (before_ms,)).fetchall()
    births: list[tuple[str, int]] = []
    if candidates:
        # A birth whose boot still has frames in the buffer is needed to decode them when a
        # forwarder reads them back. One scan of the buffer, only when there is work to do.
        buffered = set(conn.execute("SELECT DISTINCT device_id, boot FROM frames").fetchall())
        births = [key for key in map(tuple, candidates) if key not in buffered]  # type: ignore[misc]
        conn.executemany("DELETE FROM births WHERE device_id = ? AND boot = ?", births)
    held = conn.execute("DELETE FROM held WHERE received_ms < ?", (before_ms,)).rowcount
    if held:
        bump_counters(conn, {"dropped_held_without_birth": held})
    return ledger, births, held
