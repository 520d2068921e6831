"""Start-up check of the SQLite file, and salvage of a damaged one: the entry point.

A database found corrupt or truncated while the gateway was stopped must not stop ingest for the
whole fleet (under systemd a failing open is a crash loop). Instead `recover`:

1. checks whether the file set (db, -wal) is readable (`sqlite_file.check`); a missing file is
   not damage;
2. sets the damaged files aside under `<data_dir>/quarantine/` (`salvage.set_aside`), never
   modified or deleted;
3. builds a fresh database beside the damaged one through the normal migrations and copies
   everything readable into it (`salvage`, generic SQLite), then rebuilds what the gateway
   derives from its frames (`rebuild`: dedup ledger, births, frame ids never going backwards,
   the frames lost counted);
4. unlinks the old names and renames the salvaged file into place, and writes the report
   (`recovery.json` beside the evidence, one ERROR line in the log).

Until step 4 the damaged file stays at its name, so a crash during recovery simply repeats it on
the next start. Sync sqlite3 only: `Database.open` runs this on its writer thread.
"""

from __future__ import annotations

import datetime
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gateway.buffer import rebuild, salvage, store
from gateway.buffer.rebuild import COUNTER_RECOVERIES, COUNTER_UNREADABLE_FRAMES
from gateway.buffer.salvage import QUARANTINE_DIR, TableSalvage
from gateway.buffer.sqlite_file import StartupCheck, check, sibling

__all__ = ["COUNTER_RECOVERIES", "COUNTER_UNREADABLE_FRAMES", "REPORT_NAME", "Recovery",
           "StartupCheck", "check", "last_report", "recover"]

log = logging.getLogger(__name__)

REPORT_NAME = "recovery.json"


@dataclass(slots=True)
class Recovery:
    at: str  # UTC, ISO 8601
    problem: str  # what the check found
    quarantined_to: str  # directory holding the damaged files and recovery.json
    files: list[str]  # names of the damaged files moved there
    tables: dict[str, TableSalvage] = field(default_factory=dict)
    lost_frames: int = 0  # acknowledged frames (ids after the lowest cursor) not salvaged
    lost_frame_ids: list[tuple[int, int]] = field(default_factory=list)  # first ranges, inclusive
    frame_ids: tuple[int, int] = (0, 0)  # (lowest cursor, highest id): the range accounted for
    salvage_error: str = ""  # set when salvage failed and the database started empty
    notes: list[str] = field(default_factory=list)  # caveats on the figures
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """The one ERROR line: what, where the copy is, salvaged and lost per table."""
        salvaged = ", ".join(f"{t} {s.salvaged}" for t, s in self.tables.items()) or "none"
        unreadable = ", ".join(f"{t} {s.unreadable if s.complete or s.unreadable else '?'}"
                               for t, s in self.tables.items() if not s.complete or s.unreadable)
        outcome = (f"salvage FAILED ({self.salvage_error}); started with an EMPTY database"
                   if self.salvage_error else
                   f"salvaged rows: {salvaged}; unreadable: {unreadable or 'none'}; "
                   f"acknowledged frames lost: {self.lost_frames}")
        notes = f"; notes: {' '.join(self.notes)}" if self.notes else ""
        return (f"database was damaged ({self.problem}): moved {', '.join(self.files)} to "
                f"{self.quarantined_to}; {outcome}{notes}; the gateway carries on "
                f"({self.seconds:.1f} s)")


def recover(path: Path, *, migrate: Callable[[sqlite3.Connection], object],
            startup_check: StartupCheck = "quick", endpoints: Sequence[str] = (),
            now: datetime.datetime | None = None) -> Recovery | None:
    """Check path; if damaged, quarantine it and put a salvaged database in its place.

    Returns None when the file was fine (it is then left untouched). Raises StoreError only if
    the damaged files cannot be set aside (a read-only or full volume): nothing else can be done
    then without destroying evidence.
    """
    started = time.monotonic()
    salvage.remove_leftovers(path)
    present = salvage.present(path)
    problem = check(path, startup_check)
    if problem is None:
        return None
    now = now or datetime.datetime.now(datetime.UTC)
    entry, files = salvage.set_aside(path, now, present)
    result = Recovery(at=now.isoformat(timespec="seconds"), problem=problem,
                      quarantined_to=str(entry), files=files)
    fresh = sibling(path, salvage.SCRATCH)
    try:
        salvage.build_fresh(fresh, migrate)
        if "" in present and path.stat().st_size > 0:
            _salvage(entry, path.name, fresh, result, endpoints)
        else:
            result.notes.append("nothing to salvage: there was no database content.")
            _count_recovery(fresh)
    except Exception as exc:  # never a crash loop: keep the evidence, start empty, say so
        log.exception("salvage of %s failed", entry)
        result.salvage_error = f"{type(exc).__name__}: {exc}"
        result.tables = {}
        salvage.remove_leftovers(path)
        salvage.build_fresh(fresh, migrate)
        _count_recovery(fresh)
    result.seconds = round(time.monotonic() - started, 3)
    _write_report(entry, result)
    salvage.put_in_place(fresh, path)
    log.error("%s", result.summary())
    return result


def _salvage(entry: Path, name: str, fresh: Path, result: Recovery,
             endpoints: Sequence[str]) -> None:
    """Copy what is readable of the quarantined `name` into fresh; the gateway's rebuild."""
    def copy(src: sqlite3.Connection, dest: sqlite3.Connection) -> None:
        loss = rebuild.copy_all(src, dest, result.tables, result.notes, endpoints)
        result.lost_frames, result.lost_frame_ids, result.frame_ids = (
            loss.lost, loss.lost_ids, loss.ids)

    salvage.salvage_into(entry, name, fresh, result.notes, probe_table=rebuild.FRAMES,
                         copy=copy)


def last_report(path: Path) -> dict[str, Any] | None:
    """The newest recovery.json under path's quarantine directory, if any."""
    root = path.parent / QUARANTINE_DIR
    reports = sorted(root.glob(f"{path.name}.*/{REPORT_NAME}"))
    for report in reversed(reports):
        try:
            data: dict[str, Any] = json.loads(report.read_text())
            return data
        except (OSError, ValueError):
            continue
    return None


def _count_recovery(db: Path) -> None:
    """A recovery with nothing salvaged still counts (salvage counts its own in the copy)."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        store.bump_counters(conn, {COUNTER_RECOVERIES: 1})
    finally:
        conn.close()
    salvage.fsync(db)


def _write_report(entry: Path, result: Recovery) -> None:
    try:
        (entry / REPORT_NAME).write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    except OSError as exc:  # the log line still says everything
        log.warning("could not write %s: %s", entry / REPORT_NAME, exc)
