"""Start-up check of the SQLite file, and salvage of a damaged one.

A database found corrupt or truncated while the gateway was stopped must not stop ingest for the
whole fleet (under systemd a failing open is a crash loop). Instead:

1. `check` decides whether the file set (db, -wal) is readable; a missing file is not damage.
2. The damaged files are hard-linked into `<data_dir>/quarantine/<db name>.<UTC time>/`: they
   are the operator's evidence and a second chance with `sqlite3 .recover`, so they are never
   modified or deleted.
3. A fresh database is built beside the damaged one through the normal migrations, and
   everything readable is copied into it row by row, in key order, skipping unreadable
   stretches. Frames keep their ids (endpoint cursors compare ids) and sqlite_sequence never
   goes below any id that was used before.
4. The old names are unlinked and the salvaged file is renamed into place.

Until step 4 the damaged file stays at its name, so a crash during recovery simply repeats it on
the next start. Sync sqlite3 only: `Database.open` runs this on its writer thread.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import shutil
import sqlite3
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from gateway.errors import StoreError
from gateway.seq_ranges import SeqRanges, decode_ranges, encode_ranges

log = logging.getLogger(__name__)

StartupCheck = Literal["quick", "off"]
QUARANTINE_DIR = "quarantine"
REPORT_NAME = "recovery.json"
SUFFIXES = ("", "-wal", "-shm")
WAL_MAGIC = (0x377F0682, 0x377F0683)
# Effort bound per table: each unreadable stretch costs ~130 B-tree seeks to step over, so this
# caps a table's skipping at well under a second of work even on a wrecked file.
MAX_PROBES_PER_TABLE = 20_000
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Copied first: their rows name the (device_id, boot) keys used to probe births and ledger.
TABLE_ORDER = ("frames", "held", "devices", "cursors", "births", "ledger", "counters",
               "quarantine", "dead_letters")
# Durable totals in the counters table; the metrics start from them.
COUNTER_RECOVERIES = "store_recoveries"
COUNTER_UNREADABLE_FRAMES = "store_unreadable_frames"


@dataclass(slots=True)
class TableSalvage:
    """salvaged: rows copied. unreadable: frames, acknowledged frame ids not salvaged (exact);
    births/ledger, known keys whose row could not be read; other tables, row ids skipped over
    (an estimate: ids can have gaps). complete: no read error at all."""

    salvaged: int = 0
    unreadable: int = 0
    complete: bool = True
    error: str = ""


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


# ---------------------------------------------------------------------------- check
def wal_header_problem(wal: Path) -> str | None:
    """Why a non-empty -wal cannot be a write-ahead log, or None. SQLite silently ignores such a
    file, and with it every commit it held: that must be said, not skipped."""
    try:
        size = wal.stat().st_size
    except FileNotFoundError:
        return None
    if size == 0:
        return None
    with wal.open("rb") as f:
        header = f.read(32)
    if len(header) < 32:
        return f"{wal.name} is {size} bytes, shorter than a WAL header"
    magic, _version, page_size = struct.unpack(">III", header[:12])
    if magic not in WAL_MAGIC:
        return f"{wal.name} ({size} bytes) has no write-ahead log header"
    if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
        return f"{wal.name} names an impossible page size {page_size}"
    s1, s2 = _wal_checksum(header[:24], big_endian=magic == WAL_MAGIC[1])
    if (s1, s2) != struct.unpack(">II", header[24:32]):
        return f"{wal.name} header checksum does not match"
    return None


def _wal_checksum(data: bytes, *, big_endian: bool) -> tuple[int, int]:
    """SQLite's WAL checksum (file format section 4.1) over 8-byte chunks."""
    words = struct.unpack((">" if big_endian else "<") + f"{len(data) // 4}I", data)
    s1 = s2 = 0
    for i in range(0, len(words), 2):
        s1 = (s1 + words[i] + s2) & 0xFFFFFFFF
        s2 = (s2 + words[i + 1] + s1) & 0xFFFFFFFF
    return s1, s2


def _connect_ro(path: Path, *, lenient: bool = False) -> sqlite3.Connection:
    # mode=ro: a read-only connection never checkpoints, so the files are not changed by looking
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                           check_same_thread=False)
    if lenient:  # salvage: read a file shorter than its header says instead of refusing it
        conn.execute("PRAGMA writable_schema=ON")
    return conn


def check(path: Path, startup_check: StartupCheck = "quick") -> str | None:
    """What is wrong with the database at path, or None if it is usable (or absent)."""
    wal = _sibling(path, "-wal")
    if not path.exists():
        if wal.exists() and wal.stat().st_size > 0:
            return f"{wal.name} exists without its database file"
        return None
    problem = wal_header_problem(wal)
    if problem:
        return problem
    has_wal = wal.exists() and wal.stat().st_size > 0
    size = path.stat().st_size
    if size == 0 and not has_wal:
        return "the database file is empty (zero length)"
    problem = _size_problem(path, size, has_wal)
    if problem:
        return problem
    try:
        conn = _connect_ro(path)
    except sqlite3.Error as exc:
        return f"cannot open: {exc}"
    try:
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        conn.execute("PRAGMA user_version").fetchone()
        if startup_check == "quick":
            rows = conn.execute("PRAGMA quick_check(5)").fetchall()
            if rows != [("ok",)]:
                return "quick_check: " + "; ".join(str(r[0]).replace("\n", "; ") for r in rows)
    except sqlite3.DatabaseError as exc:
        return str(exc)
    finally:
        conn.close()
    return None


def _size_problem(path: Path, size: int, has_wal: bool) -> str | None:
    """Truncation seen from the header alone: free, so it is caught with the check off too."""
    with path.open("rb") as f:
        header = f.read(100)
    page_size = _header_page_size(header)
    if page_size is None:
        return None  # not a database header at all: opening it says so
    if size % page_size:
        return f"the file is {size} bytes, not a whole number of {page_size}-byte pages"
    change_counter, pages = struct.unpack(">II", header[24:32])
    valid_for = struct.unpack(">I", header[92:96])[0]
    # The header's page count is trusted only when valid and no WAL may be ahead of it.
    if not has_wal and pages and valid_for == change_counter and size < pages * page_size:
        return f"the file is truncated: {size // page_size} of {pages} pages"
    return None


# ---------------------------------------------------------------------------- recover
def recover(path: Path, *, migrate: Callable[[sqlite3.Connection], object],
            startup_check: StartupCheck = "quick", endpoints: Sequence[str] = (),
            now: datetime.datetime | None = None) -> Recovery | None:
    """Check path; if damaged, quarantine it and put a salvaged database in its place.

    Returns None when the file was fine (it is then left untouched). Raises StoreError only if
    the damaged files cannot be set aside (a read-only or full volume): nothing else can be done
    then without destroying evidence.
    """
    started = time.monotonic()
    _remove_leftovers(path)
    # Looking may create an empty -wal/-shm: only what was there before is evidence.
    present = [s for s in SUFFIXES if _sibling(path, s).exists()]
    problem = check(path, startup_check)
    if problem is None:
        return None
    now = now or datetime.datetime.now(datetime.UTC)
    entry, files = _quarantine(path, now, present)
    result = Recovery(at=now.isoformat(timespec="seconds"), problem=problem,
                      quarantined_to=str(entry), files=files)
    fresh = _sibling(path, ".salvage")
    try:
        _build_fresh(fresh, migrate)
        if "" in present and path.stat().st_size > 0:
            _salvage(entry, path.name, fresh, result, endpoints)
        else:
            result.notes.append("nothing to salvage: there was no database content.")
            _bump(fresh, {COUNTER_RECOVERIES: 1})
    except Exception as exc:  # never a crash loop: keep the evidence, start empty, say so
        log.exception("salvage of %s failed", entry)
        result.salvage_error = f"{type(exc).__name__}: {exc}"
        result.tables = {}
        _remove_leftovers(path)
        _build_fresh(fresh, migrate)
        _bump(fresh, {COUNTER_RECOVERIES: 1})
    result.seconds = round(time.monotonic() - started, 3)
    _write_report(entry, result)
    for suffix in ("-wal", "-shm"):  # first: an old -wal beside the new file would be replayed
        with contextlib.suppress(FileNotFoundError):
            _sibling(path, suffix).unlink()
    os.replace(fresh, path)
    _fsync(path.parent)
    log.error("%s", result.summary())
    return result


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


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _remove_leftovers(path: Path) -> None:
    """A salvage interrupted by a crash left only its own scratch file: start over."""
    for suffix in (".salvage", ".salvage-journal"):
        with contextlib.suppress(FileNotFoundError):
            _sibling(path, suffix).unlink()


def _quarantine(path: Path, now: datetime.datetime,
                present: Sequence[str]) -> tuple[Path, list[str]]:
    """Hard-link (or, across devices, copy) the damaged files into a new quarantine entry."""
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    root = path.parent / QUARANTINE_DIR
    try:
        root.mkdir(parents=True, exist_ok=True)
        entry = root / f"{path.name}.{stamp}"
        n = 1
        while entry.exists():
            n += 1
            entry = root / f"{path.name}.{stamp}.{n}"
        entry.mkdir()
        files = []
        for suffix in present:
            source = _sibling(path, suffix)
            target = entry / source.name
            try:
                os.link(source, target)
            except OSError:
                shutil.copy2(source, target)
            files.append(source.name)
        _fsync(entry)
        _fsync(root)
    except OSError as exc:
        raise StoreError(f"database {path} is damaged and could not be set aside: {exc}",
                         hint=f"free space or permissions on {path.parent}; or move "
                              f"{path.name}* away by hand") from exc
    return entry, files


def _build_fresh(fresh: Path, migrate: Callable[[sqlite3.Connection], object]) -> None:
    conn = sqlite3.connect(fresh, isolation_level=None)
    try:
        migrate(conn)
    finally:
        conn.close()


def _bump(db: Path, counters: dict[str, int]) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.executemany("INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name)"
                         " DO UPDATE SET value = value + excluded.value", list(counters.items()))
    finally:
        conn.close()
    _fsync(db)


def _fsync(path: Path) -> None:
    """fsync a file, or a directory (so a rename or link in it is durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_report(entry: Path, result: Recovery) -> None:
    try:
        (entry / REPORT_NAME).write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    except OSError as exc:  # the log line still says everything
        log.warning("could not write %s: %s", entry / REPORT_NAME, exc)


# ---------------------------------------------------------------------------- salvage
def _open_source(entry: Path, name: str, work: Path, notes: list[str]) -> sqlite3.Connection:
    """A read-only connection to a working view of the quarantined copy.

    The view lives in `work`: a hard link to the db (a read-only connection never writes it)
    plus a copy of a valid -wal (SQLite writes a -shm beside it, which must not touch the
    evidence). A db whose header is unreadable gets a full copy with a rebuilt header.
    """
    work.mkdir()
    db = work / name
    wal = entry / (name + "-wal")
    has_wal = wal.exists() and wal.stat().st_size > 0 and wal_header_problem(wal) is None
    if has_wal:
        shutil.copyfile(wal, work / wal.name)
    size = (entry / name).stat().st_size
    with (entry / name).open("rb") as f:
        header = f.read(100)
    page_size = _header_page_size(header)
    if page_size and size % page_size:
        # A file cut mid-page: SQLite would read the missing tail of the last page as zeros and
        # return rows with silently wrong payloads. Read a copy without the partial page.
        _copy_prefix(entry / name, db, size // page_size * page_size)
        notes.append("the file ended mid-page: its partial last page was not read.")
    else:
        try:
            os.link(entry / name, db)
        except OSError:
            shutil.copyfile(entry / name, db)
    conn = _connect_ro(db, lenient=True)
    try:
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.DatabaseError as exc:
        conn.close()
        if "not a database" not in str(exc) or db.stat().st_size < 1024:
            raise
    # The 100-byte header is gone but the pages behind it may be fine: rebuild it on a copy.
    for page_size in (4096, 1024, 2048, 8192, 16384, 32768, 65536, 512):
        db.unlink()
        _copy_prefix(entry / name, db, size // page_size * page_size)
        _write_header(db, page_size, wal_mode=has_wal)
        conn = _connect_ro(db, lenient=True)
        try:
            conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'").fetchone()
            conn.execute("SELECT COUNT(*) FROM frames LIMIT 1").fetchone()
        except sqlite3.DatabaseError:
            conn.close()
            continue
        notes.append(f"the file header was unreadable; read with a rebuilt header "
                     f"(page size {page_size}).")
        return conn
    raise StoreError("the file header is unreadable and no page size fits the pages")


def _header_page_size(header: bytes) -> int | None:
    if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
        return None
    value = struct.unpack(">H", header[16:18])[0]
    return 65536 if value == 1 else value


def _copy_prefix(source: Path, target: Path, length: int) -> None:
    with source.open("rb") as src, target.open("wb") as dst:
        remaining = length
        while remaining:
            chunk = src.read(min(remaining, 1 << 20))
            if not chunk:
                break
            dst.write(chunk)
            remaining -= len(chunk)


def _write_header(db: Path, page_size: int, *, wal_mode: bool) -> None:
    """A minimal valid header: the in-header size is left invalid so SQLite takes the file's
    size; no freelist; UTF-8; schema format 4 (file format, section 1.3)."""
    version = 2 if wal_mode else 1
    header = bytearray(100)
    header[0:16] = b"SQLite format 3\x00"
    header[16:18] = struct.pack(">H", 1 if page_size == 65536 else page_size)
    header[18:24] = bytes([version, version, 0, 64, 32, 32])
    struct.pack_into(">I", header, 24, 1)  # change counter != version-valid-for: size invalid
    struct.pack_into(">I", header, 40, 1)  # schema cookie
    struct.pack_into(">I", header, 44, 4)  # schema format
    struct.pack_into(">I", header, 56, 1)  # UTF-8
    with db.open("r+b") as f:
        f.write(header)


@dataclass(slots=True)
class _Table:
    name: str
    columns: list[str]
    types: list[str]
    notnull: list[bool]
    key: list[str]  # primary key columns of a WITHOUT ROWID table; [] for rowid tables


def _tables(dest: sqlite3.Connection) -> dict[str, _Table]:
    """The fresh (migrated) schema drives the copy: columns the source lacks are left out."""
    names = [r[0] for r in dest.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
    tables = {}
    for name in names:
        info = dest.execute(f"PRAGMA table_info({name})").fetchall()
        without_rowid = "WITHOUT ROWID" in dest.execute(
            "SELECT sql FROM sqlite_master WHERE name = ?", (name,)).fetchone()[0].upper()
        key = [r[1] for r in sorted(info, key=lambda r: r[5]) if r[5]] if without_rowid else []
        tables[name] = _Table(name, [r[1] for r in info], [r[2].upper() for r in info],
                              [bool(r[3]) or bool(r[5]) for r in info], key)
    return tables


_PY_TYPES: dict[str, tuple[type, ...]] = {"INTEGER": (int,), "TEXT": (str,), "BLOB": (bytes,)}


def _valid(table: _Table, row: Sequence[Any]) -> bool:
    """A damaged page can decode into rows of the wrong shape: never copy those."""
    for value, kind, notnull in zip(row, table.types, table.notnull, strict=True):
        if value is None:
            if notnull:
                return False
        elif not isinstance(value, _PY_TYPES.get(kind, (object,))):
            return False
    return True


class _Prober:
    """Reads a table in key order and steps over what cannot be read, within a probe budget."""

    def __init__(self, src: sqlite3.Connection, table: _Table, columns: list[str]) -> None:
        self.src, self.table, self.columns = src, table, columns
        self.probes = 0
        self.error = ""
        self.skipped: list[tuple[int, int | None]] = []  # unreadable rowids [start, resume)
        self.failed_keys = 0
        self.exhausted = False

    def _note(self, exc: sqlite3.Error) -> None:
        if not self.error:
            self.error = str(exc)

    # -- rowid tables
    # Always "rowid >= x": SQLite seeks to x itself, while "rowid > x - 1" seeks to x - 1 and
    # fails when that is on an unreadable page even though x is on a readable one.
    def rowid_rows(self) -> Iterator[tuple[Any, ...]]:
        cols = ", ".join(self.columns)
        sql = f"SELECT rowid, {cols} FROM {self.table.name} WHERE rowid >= ? ORDER BY rowid"
        start = INT64_MIN
        while True:
            try:
                for row in self.src.execute(sql, (start,)):
                    start = row[0] + 1
                    yield row
                return
            except sqlite3.DatabaseError as exc:
                self._note(exc)
            # The sqlite3 module steps one row ahead: the error may be the next row's, and the
            # row before it, still unseen, readable. A single-row read tells.
            readable, row = self._read_from(start)
            if readable:
                if row is None:
                    return
                start = row[0] + 1
                yield row
                continue
            resume = self._next_readable(start)
            self.skipped.append((start, resume))
            if resume is None:
                return
            start = resume

    def _read_from(self, rowid: int) -> tuple[bool, tuple[Any, ...] | None]:
        self.probes += 1
        try:
            row = self.src.execute(
                f"SELECT rowid, {', '.join(self.columns)} FROM {self.table.name}"
                " WHERE rowid >= ? ORDER BY rowid LIMIT 1", (rowid,)).fetchone()
            return True, row
        except sqlite3.DatabaseError:
            return False, None

    def _next_readable(self, start: int) -> int | None:
        """The smallest x > start from which reading works again (rows in [start, x) are
        unreadable); None when nothing after it is readable or the budget is spent."""
        lo = max(start, 0)  # fails; the gateway's row ids are positive
        x, step = lo + 1, 1
        while not self._read_from(x)[0]:
            if x >= INT64_MAX or self.probes >= MAX_PROBES_PER_TABLE:
                self.exhausted = self.probes >= MAX_PROBES_PER_TABLE
                return None
            lo, step = x, step * 2
            x = min(x + step, INT64_MAX)
        while x - lo > 1 and self.probes < MAX_PROBES_PER_TABLE:
            mid = (lo + x) // 2
            if self._read_from(mid)[0]:
                x = mid
            else:
                lo = mid
        return x

    # -- WITHOUT ROWID tables keyed by (device_id, boot)
    def key_rows(self, known: set[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
        """Rows in key order; past an unreadable stretch, resume at the next key known from
        other tables (frames, held, devices) whose row can be read again."""
        key, table = self.table.key, self.table.name
        cols, order = ", ".join(self.columns), ", ".join(self.table.key)
        marks = ",".join("?" * len(key))
        at_sql = f"SELECT {cols} FROM {table} WHERE ({order}) >= ({marks}) ORDER BY {order}"
        after_sql = f"SELECT {cols} FROM {table} WHERE ({order}) > ({marks}) ORDER BY {order}"
        positions = [self.columns.index(k) for k in key]
        candidates = sorted(known)
        last: tuple[Any, ...] | None = None
        sql: str = f"SELECT {cols} FROM {table} ORDER BY {order}"
        params: tuple[Any, ...] = ()
        while True:
            try:
                for row in self.src.execute(sql, params):
                    last = tuple(row[i] for i in positions)
                    yield row
                return
            except sqlite3.DatabaseError as exc:
                self._note(exc)
            if last is not None:  # as for rowid tables: the next row may be readable alone
                self.probes += 1
                try:
                    row = self.src.execute(after_sql + " LIMIT 1", last).fetchone()
                except sqlite3.DatabaseError:
                    row = None
                else:
                    if row is None:
                        return
                if row is not None:
                    last = tuple(row[i] for i in positions)
                    yield row
                    sql, params = after_sql, last
                    continue
            for candidate in [c for c in candidates if last is None or c > last]:
                if self.probes >= MAX_PROBES_PER_TABLE:
                    self.exhausted = True
                    return
                self.probes += 1
                try:
                    self.src.execute(at_sql + " LIMIT 1", candidate).fetchone()
                except sqlite3.DatabaseError:
                    self.failed_keys += 1
                    last = candidate
                    continue
                sql, params = at_sql, candidate
                break
            else:
                return


def _source_columns(src: sqlite3.Connection, table: _Table) -> list[str] | None:
    try:
        info = src.execute(f"PRAGMA table_info({table.name})").fetchall()
    except sqlite3.DatabaseError:
        return None
    present = {r[1] for r in info}
    if not present:
        return None
    return [c for c in table.columns if c in present]


def _salvage(entry: Path, name: str, fresh: Path, result: Recovery,
             endpoints: Sequence[str]) -> None:
    work = entry / ".work"
    try:
        src = _open_source(entry, name, work, result.notes)
        try:
            dest = sqlite3.connect(fresh, isolation_level=None)
            try:
                dest.execute("PRAGMA synchronous=OFF")  # one fsync at the end instead
                dest.execute("BEGIN")
                _copy_all(src, dest, result, endpoints)
                dest.execute("COMMIT")
            finally:
                dest.close()
        finally:
            src.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _fsync(fresh)


def _copy_all(src: sqlite3.Connection, dest: sqlite3.Connection, result: Recovery,
              endpoints: Sequence[str]) -> None:
    tables = _tables(dest)
    order = [t for t in TABLE_ORDER if t in tables] + sorted(set(tables) - set(TABLE_ORDER))
    keys: set[tuple[Any, ...]] = set()  # (device_id, boot) seen in frames, held, devices
    frame_ids: list[int] = []
    seqs: dict[tuple[str, int], SeqRanges] = {}  # seqs of salvaged telemetry and held frames
    birth_frames: dict[tuple[str, int], tuple[int, bytes]] = {}
    copied: dict[str, list[tuple[Any, ...]]] = {"cursors": [], "births": [], "ledger": [],
                                                "dead_letters": []}
    first_frame_clean = False
    for name in order:
        table = tables[name]
        stats = result.tables.setdefault(name, TableSalvage())
        columns = _source_columns(src, table)
        if columns is None:
            stats.complete, stats.error = False, "table unreadable (schema or root page)"
            continue
        prober = _Prober(src, table, columns)
        insert = (f"INSERT OR IGNORE INTO {name} ({', '.join(columns)})"
                  f" VALUES ({','.join('?' * len(columns))})")
        view = _Table(name, columns, [table.types[table.columns.index(c)] for c in columns],
                      [table.notnull[table.columns.index(c)] for c in columns], table.key)
        rows = prober.key_rows(keys) if table.key else (r[1:] for r in prober.rowid_rows())
        bad = 0
        for row in rows:
            if not _valid(view, row):
                bad += 1
                continue
            if dest.execute(insert, row).rowcount != 1:
                bad += 1
                continue
            stats.salvaged += 1
            record = dict(zip(columns, row, strict=True))
            if name == "frames":
                if not frame_ids and not prober.skipped:
                    first_frame_clean = True
                frame_ids.append(record["id"])  # in id order: the scan is by rowid
                _note_frame(record, keys, seqs, birth_frames)
            elif name == "held":
                keys.add((record["device_id"], record["boot"]))
                seqs.setdefault((record["device_id"], record["boot"]),
                                SeqRanges()).add(record["seq"])
            elif name == "devices" and record.get("boot") is not None:
                keys.add((record["device_id"], record["boot"]))
            elif name in copied:
                copied[name].append(tuple(row))
        stats.complete = not prober.error and not bad
        stats.error = prober.error or (f"{bad} rows of the wrong shape" if bad else "")
        if prober.exhausted:
            stats.error += f" (gave up after {prober.probes} probes)"
        if table.key:
            stats.unreadable = prober.failed_keys + bad
        elif name != "frames":
            stats.unreadable = bad + sum(
                resume - max(start, 1) for start, resume in prober.skipped if resume is not None)
            if any(resume is None for _start, resume in prober.skipped):
                stats.error += " (the rest of the table was unreadable)"
    _rebuild_dedup_state(dest, result, seqs, birth_frames, tables)
    _restore_sequence(src, dest, result, frame_ids, first_frame_clean, endpoints)


def _note_frame(record: dict[str, Any], keys: set[tuple[Any, ...]],
                seqs: dict[tuple[str, int], SeqRanges],
                birth_frames: dict[tuple[str, int], tuple[int, bytes]]) -> None:
    key = (record["device_id"], record["boot"])
    keys.add(key)
    if record["kind"] == 1:  # store.KIND_BIRTH
        birth_frames[key] = (record["received_ms"], record["payload"])
    elif record["seq"] is not None:
        seqs.setdefault(key, SeqRanges()).add(record["seq"])


def _rebuild_dedup_state(dest: sqlite3.Connection, result: Recovery,
                         seqs: dict[tuple[str, int], SeqRanges],
                         birth_frames: dict[tuple[str, int], tuple[int, bytes]],
                         tables: dict[str, _Table]) -> None:
    """Every salvaged frame was marked seen when it was stored: if its ledger row was lost,
    mark it again, so that a replay of it is still a duplicate. Likewise a birth row lost is
    rebuilt from a salvaged birth frame, or that boot's frames could not be decoded."""
    now_ms = int(time.time() * 1000)
    rebuilt = 0
    if "ledger" in tables:
        for (device_id, boot), ranges in seqs.items():
            row = dest.execute("SELECT ranges FROM ledger WHERE device_id = ? AND boot = ?",
                               (device_id, boot)).fetchone()
            merged = decode_ranges(row[0]) if row else SeqRanges()
            before = list(merged.ranges())
            for start, end in ranges.ranges():
                for seq in range(start, end):
                    merged.add(seq)
            if list(merged.ranges()) != before:
                rebuilt += 1
                dest.execute("INSERT OR REPLACE INTO ledger (device_id, boot, ranges, updated_ms)"
                             " VALUES (?,?,?,?)", (device_id, boot, encode_ranges(merged), now_ms))
    if rebuilt:
        result.notes.append(f"{rebuilt} ledger rows rebuilt or extended from salvaged frames.")
    births = 0
    if "births" in tables:
        for (device_id, boot), (received_ms, payload) in birth_frames.items():
            births += dest.execute(
                "INSERT OR IGNORE INTO births (device_id, boot, received_ms, payload)"
                " VALUES (?,?,?,?)", (device_id, boot, received_ms, payload)).rowcount
    if births:
        result.notes.append(f"{births} births rebuilt from salvaged birth frames.")


def _restore_sequence(src: sqlite3.Connection, dest: sqlite3.Connection, result: Recovery,
                      frame_ids: list[int], first_frame_clean: bool,
                      endpoints: Sequence[str]) -> None:
    """Frame ids must never go backwards (a new frame at or below a cursor would be skipped by
    that forwarder), and the acknowledged frames that are gone are counted."""
    try:
        row = src.execute("SELECT seq FROM sqlite_sequence WHERE name = 'frames'").fetchone()
        old_seq = int(row[0]) if row and isinstance(row[0], int) else 0
    except sqlite3.DatabaseError:
        old_seq = 0
        result.notes.append("sqlite_sequence unreadable: the highest frame id is the highest "
                            "salvaged or sent one; later frames that were lost are not counted.")
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
    if not result.tables.get("cursors", TableSalvage()).complete:
        result.notes.append("cursors unreadable: salvaged frames already sent may be sent "
                            "again, and frames sent and deleted may be counted as lost.")
    if first_frame_clean and frame_ids:  # the table's start was read: nothing before it is lost
        low = max(low, frame_ids[0] - 1)
    present = sum(1 for i in frame_ids if low < i <= high)
    result.frame_ids = (low, high)
    result.lost_frames = max(0, high - low - present)
    result.lost_frame_ids = _missing_ranges(frame_ids, low, high, limit=20)
    stats = result.tables.setdefault("frames", TableSalvage())
    stats.unreadable = result.lost_frames
    if result.lost_frames:
        stats.complete = False
    if result.lost_frames:
        dest.execute("INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name)"
                     " DO UPDATE SET value = value + excluded.value",
                     (COUNTER_UNREADABLE_FRAMES, result.lost_frames))
    dest.execute("INSERT INTO counters (name, value) VALUES (?, 1) ON CONFLICT(name)"
                 " DO UPDATE SET value = value + 1", (COUNTER_RECOVERIES,))


def _missing_ranges(ids: list[int], low: int, high: int, limit: int) -> list[tuple[int, int]]:
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
