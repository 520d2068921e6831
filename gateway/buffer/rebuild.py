"""The gateway's own part of a salvage: what only fleetgate's tables can tell.

gateway.buffer.salvage copies whatever is readable, table by table; this module drives it in
the order fleetgate's tables need, and then makes the salvaged database one the gateway can
trust:

- the dedup ledger and the births are rebuilt from the salvaged frames (a replay of a salvaged
  frame must still be a duplicate, and a boot's frames need its birth to be decoded);
- frame ids never go backwards (sqlite_sequence), since endpoint cursors compare ids;
- the acknowledged frames that are gone are counted, exactly, and the durable counters record
  the recovery.
"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.buffer import store
from gateway.buffer.salvage import TableSalvage, copy_table, tables
from gateway.seq_ranges import SeqRanges, decode_ranges, encode_ranges

# Copied first: their rows name the (device_id, boot) keys used to probe births and ledger.
# (store.py writes the table names as SQL literals; migrations/ defines them.)
TABLE_ORDER = ("frames", "held", "devices", "cursors", "births", "ledger", "counters",
               "quarantine", "dead_letters")
FRAMES = TABLE_ORDER[0]  # every fleetgate database has it: proves a rebuilt header right
# Durable totals in the counters table; the metrics start from them.
COUNTER_RECOVERIES = "store_recoveries"
COUNTER_UNREADABLE_FRAMES = "store_unreadable_frames"
LOST_RANGES_REPORTED = 20  # the first ranges of lost frame ids named in the report

Key = tuple[str, int]  # (device_id, boot)


@dataclass(frozen=True, slots=True)
class FrameLoss:
    """The acknowledged frames a salvage accounted for, and those it lost."""

    lost: int  # acknowledged frames (ids after the lowest cursor) not salvaged
    lost_ids: list[tuple[int, int]]  # the first ranges of them, inclusive
    ids: tuple[int, int]  # (lowest cursor, highest id): the range accounted for


@dataclass(slots=True)
class _Seen:
    """What the copied rows tell about the gateway's state."""

    keys: set[tuple[Any, ...]] = field(default_factory=set)  # in frames, held, devices
    frame_ids: list[int] = field(default_factory=list)  # in id order: the scan is by rowid
    first_frame_clean: bool = False  # the frames table's start was read
    seqs: dict[Key, SeqRanges] = field(default_factory=dict)  # of telemetry and held frames
    birth_frames: dict[Key, tuple[int, bytes]] = field(default_factory=dict)

    def row(self, table: str, record: dict[str, Any], skipped_before: bool) -> None:
        if table == FRAMES:
            if not self.frame_ids and not skipped_before:
                self.first_frame_clean = True
            self.frame_ids.append(record["id"])
            self._frame(record)
        elif table == "held":
            key = (record["device_id"], record["boot"])
            self.keys.add(key)
            self.seqs.setdefault(key, SeqRanges()).add(record["seq"])
        elif table == "devices" and record.get("boot") is not None:
            self.keys.add((record["device_id"], record["boot"]))

    def _frame(self, record: dict[str, Any]) -> None:
        key = (record["device_id"], record["boot"])
        self.keys.add(key)
        if record["kind"] == store.KIND_BIRTH:
            self.birth_frames[key] = (record["received_ms"], record["payload"])
        elif record["seq"] is not None:
            self.seqs.setdefault(key, SeqRanges()).add(record["seq"])


def copy_all(src: sqlite3.Connection, dest: sqlite3.Connection, stats: dict[str, TableSalvage],
             notes: list[str], endpoints: Sequence[str]) -> FrameLoss:
    """Copy every table of the fresh schema from src, fleetgate's in TABLE_ORDER first, then
    rebuild what the gateway derives from its frames."""
    found = tables(dest)
    order = [t for t in TABLE_ORDER if t in found] + sorted(set(found) - set(TABLE_ORDER))
    seen = _Seen()
    for name in order:
        copy_table(src, dest, found[name], stats.setdefault(name, TableSalvage()),
                   functools.partial(seen.row, name), seen.keys,
                   estimate_lost=name != FRAMES)  # counted exactly by _restore_sequence
    if "ledger" in found:
        _rebuild_ledger(dest, notes, seen.seqs)
    if "births" in found:
        _rebuild_births(dest, notes, seen.birth_frames)
    return _restore_sequence(src, dest, stats, notes, seen, endpoints)


def _rebuild_ledger(dest: sqlite3.Connection, notes: list[str],
                    seqs: dict[Key, SeqRanges]) -> None:
    """Every salvaged frame was marked seen when it was stored: if its ledger row was lost,
    mark it again, so that a replay of it is still a duplicate."""
    now_ms = int(time.time() * 1000)
    rows: list[tuple[str, int, str, int, int | None]] = []
    for (device_id, boot), ranges in seqs.items():
        row = dest.execute("SELECT ranges FROM ledger WHERE device_id = ? AND boot = ?",
                           (device_id, boot)).fetchone()
        merged = decode_ranges(row[0]) if row else SeqRanges()
        before = list(merged.ranges())
        for start, end in ranges.ranges():
            for seq in range(start, end):
                merged.add(seq)
        if list(merged.ranges()) != before:
            rows.append((device_id, boot, encode_ranges(merged), now_ms, None))
    if rows:
        store.write_batch(dest, store.BatchWrite(ledger=rows))
        notes.append(f"{len(rows)} ledger rows rebuilt or extended from salvaged frames.")


def _rebuild_births(dest: sqlite3.Connection, notes: list[str],
                    birth_frames: dict[Key, tuple[int, bytes]]) -> None:
    """A birth row lost is rebuilt from a salvaged birth frame, or that boot's frames could not
    be decoded. A birth row salvaged is kept as it is (with its clock correction)."""
    births = 0
    for (device_id, boot), (received_ms, payload) in birth_frames.items():
        births += dest.execute(
            "INSERT OR IGNORE INTO births (device_id, boot, received_ms, payload)"
            " VALUES (?,?,?,?)", (device_id, boot, received_ms, payload)).rowcount
    if births:
        notes.append(f"{births} births rebuilt from salvaged birth frames.")


def _restore_sequence(src: sqlite3.Connection, dest: sqlite3.Connection,
                      stats: dict[str, TableSalvage], notes: list[str], seen: _Seen,
                      endpoints: Sequence[str]) -> FrameLoss:
    """Frame ids must never go backwards (a new frame at or below a cursor would be skipped by
    that forwarder), and the acknowledged frames that are gone are counted."""
    try:
        row = src.execute("SELECT seq FROM sqlite_sequence WHERE name = 'frames'").fetchone()
        old_seq = int(row[0]) if row and isinstance(row[0], int) else 0
    except sqlite3.DatabaseError:
        old_seq = 0
        notes.append("sqlite_sequence unreadable: the highest frame id is the highest "
                     "salvaged or sent one; later frames that were lost are not counted.")
    frame_ids = seen.frame_ids
    cursors = dict(dest.execute("SELECT endpoint, frame_id FROM cursors").fetchall())
    dead = dest.execute("SELECT MAX(frame_id) FROM dead_letters").fetchone()[0] or 0
    high = max([old_seq, dead, *frame_ids, *cursors.values()])
    if high:
        dest.execute("INSERT OR IGNORE INTO sqlite_sequence (name, seq) VALUES ('frames', 0)")
        dest.execute("UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = 'frames'",
                     (high,))
    # Frames are deleted only below every endpoint's cursor, so those above the lowest cursor
    # were all in the table; an endpoint without a cursor had taken nothing.
    wanted = [cursors.get(e, 0) for e in endpoints] if endpoints else list(cursors.values())
    low = min(wanted, default=0)
    if not stats.get("cursors", TableSalvage()).complete:
        notes.append("cursors unreadable: salvaged frames already sent may be sent "
                     "again, and frames sent and deleted may be counted as lost.")
    if seen.first_frame_clean and frame_ids:  # the table's start was read: none lost before
        low = max(low, frame_ids[0] - 1)
    present = sum(1 for i in frame_ids if low < i <= high)
    loss = FrameLoss(max(0, high - low - present),
                     missing_ranges(frame_ids, low, high, limit=LOST_RANGES_REPORTED), (low, high))
    frames = stats.setdefault(FRAMES, TableSalvage())
    frames.unreadable = loss.lost  # exact, where the copy could only estimate
    if loss.lost:
        frames.complete = False
    counters = {COUNTER_UNREADABLE_FRAMES: loss.lost} if loss.lost else {}
    store.bump_counters(dest, {**counters, COUNTER_RECOVERIES: 1})
    return loss


def missing_ranges(ids: list[int], low: int, high: int, limit: int) -> list[tuple[int, int]]:
    """Inclusive ranges of ids in (low, high] absent from the sorted ids, the first `limit`."""
    out: list[tuple[int, int]] = []
    expected = low + 1
    for i in ids:
        if i <= low:
            continue
        if i > high:
            break
        if i > expected:
            out.append((expected, i - 1))
            if len(out) >= limit:
                return out
        expected = i + 1
    if expected <= high and len(out) < limit:
        out.append((expected, high))
    return out
