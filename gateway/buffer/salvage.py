"""Salvage of a damaged SQLite file: set it aside, copy what is readable into a fresh one.

Generic: nothing here knows fleetgate's tables; the caller (gateway.buffer.rebuild) names the
order of the tables, the keys known from earlier ones, and what to do with each copied row.

1. `set_aside` hard-links the damaged files into `<dir>/quarantine/<db name>.<UTC time>/`: they
   are the operator's evidence and a second chance with `sqlite3 .recover`, so they are never
   modified or deleted.
2. `salvage_into` reads a working view of that copy (`open_source`) and copies it into a fresh
   database built beside the damaged one, table by table (`copy_table`), row by row in key
   order, stepping over unreadable stretches (`reader.Prober`), in one transaction.
3. `put_in_place` unlinks the old names and renames the salvaged file into place.

Until step 3 the damaged file stays at its name, so a crash during recovery simply repeats it on
the next start. Sync sqlite3 only.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import sqlite3
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.buffer.salvage_reader import Prober, Table
from gateway.buffer.sqlite_file import (
    connect_ro,
    header_page_size,
    read_header,
    sibling,
    wal_header_problem,
    write_header,
)
from gateway.errors import StoreError

QUARANTINE_DIR = "quarantine"
SUFFIXES = ("", "-wal", "-shm")  # the file set of a database in WAL mode
SCRATCH = ".salvage"  # the fresh database is built at <db name>.salvage, then renamed
WORK_DIR = ".work"  # in the quarantine entry: the working view salvage reads


@dataclass(slots=True)
class TableSalvage:
    """salvaged: rows copied. unreadable: frames, acknowledged frame ids not salvaged (exact);
    births/ledger, known keys whose row could not be read; other tables, row ids skipped over
    (an estimate: ids can have gaps). complete: no read error at all."""

    salvaged: int = 0
    unreadable: int = 0
    complete: bool = True
    error: str = ""


# ---------------------------------------------------------------------------- set aside
def present(path: Path) -> list[str]:
    """The suffixes of path's file set that exist now (looking may create an empty -wal/-shm:
    only what was there before is evidence)."""
    return [s for s in SUFFIXES if sibling(path, s).exists()]


def remove_leftovers(path: Path) -> None:
    """A salvage interrupted by a crash left only its own scratch file: start over."""
    for suffix in (SCRATCH, SCRATCH + "-journal"):
        with contextlib.suppress(FileNotFoundError):
            sibling(path, suffix).unlink()


def set_aside(path: Path, now: datetime.datetime,
              suffixes: Sequence[str]) -> tuple[Path, list[str]]:
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
        for suffix in suffixes:
            source = sibling(path, suffix)
            target = entry / source.name
            try:
                os.link(source, target)
            except OSError:
                shutil.copy2(source, target)
            files.append(source.name)
        fsync(entry)
        fsync(root)
    except OSError as exc:
        raise StoreError(f"database {path} is damaged and could not be set aside: {exc}",
                         hint=f"free space or permissions on {path.parent}; or move "
                              f"{path.name}* away by hand") from exc
    return entry, files


def build_fresh(fresh: Path, migrate: Callable[[sqlite3.Connection], object]) -> None:
    conn = sqlite3.connect(fresh, isolation_level=None)
    try:
        migrate(conn)
    finally:
        conn.close()


def put_in_place(fresh: Path, path: Path) -> None:
    for suffix in ("-wal", "-shm"):  # first: an old -wal beside the new file would be replayed
        with contextlib.suppress(FileNotFoundError):
            sibling(path, suffix).unlink()
    os.replace(fresh, path)
    fsync(path.parent)


def fsync(path: Path) -> None:
    """fsync a file, or a directory (so a rename or link in it is durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------- salvage
def salvage_into(entry: Path, name: str, fresh: Path, notes: list[str], *, probe_table: str,
                 copy: Callable[[sqlite3.Connection, sqlite3.Connection], None]) -> None:
    """Open the quarantined copy of `name` in `entry` and run copy(src, dest) into `fresh` in
    one transaction. probe_table: a table every database of this schema has (see open_source)."""
    work = entry / WORK_DIR
    try:
        src = open_source(entry, name, work, notes, probe_table)
        try:
            dest = sqlite3.connect(fresh, isolation_level=None)
            try:
                dest.execute("PRAGMA synchronous=OFF")  # one fsync at the end instead
                dest.execute("BEGIN")
                copy(src, dest)
                dest.execute("COMMIT")
            finally:
                dest.close()
        finally:
            src.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    fsync(fresh)


def open_source(entry: Path, name: str, work: Path, notes: list[str],
                probe_table: str) -> sqlite3.Connection:
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
    page_size = header_page_size(read_header(entry / name))
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
    conn = connect_ro(db, lenient=True)
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
        write_header(db, page_size, wal_mode=has_wal)
        conn = connect_ro(db, lenient=True)
        try:
            conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'").fetchone()
            conn.execute(f"SELECT COUNT(*) FROM {probe_table} LIMIT 1").fetchone()
        except sqlite3.DatabaseError:
            conn.close()
            continue
        notes.append(f"the file header was unreadable; read with a rebuilt header "
                     f"(page size {page_size}).")
        return conn
    raise StoreError("the file header is unreadable and no page size fits the pages")


def _copy_prefix(source: Path, target: Path, length: int) -> None:
    with source.open("rb") as src, target.open("wb") as dst:
        remaining = length
        while remaining:
            chunk = src.read(min(remaining, 1 << 20))
            if not chunk:
                break
            dst.write(chunk)
            remaining -= len(chunk)


def tables(dest: sqlite3.Connection) -> dict[str, Table]:
    """The fresh (migrated) schema drives the copy: columns the source lacks are left out."""
    names = [r[0] for r in dest.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
    found = {}
    for name in names:
        info = dest.execute(f"PRAGMA table_info({name})").fetchall()
        without_rowid = "WITHOUT ROWID" in dest.execute(
            "SELECT sql FROM sqlite_master WHERE name = ?", (name,)).fetchone()[0].upper()
        key = [r[1] for r in sorted(info, key=lambda r: r[5]) if r[5]] if without_rowid else []
        found[name] = Table(name, [r[1] for r in info], [r[2].upper() for r in info],
                            [bool(r[3]) or bool(r[5]) for r in info], key)
    return found


# Called with each copied row (column -> value) and whether an unreadable stretch of the table
# was stepped over before it.
OnRow = Callable[[dict[str, Any], bool], None]


def copy_table(src: sqlite3.Connection, dest: sqlite3.Connection, table: Table,
               stats: TableSalvage, on_row: OnRow, known_keys: Collection[tuple[Any, ...]] = (),
               *, estimate_lost: bool = True) -> None:
    """Copy table's readable rows of the right shape from src into dest, counting into stats.
    known_keys: keys of a WITHOUT ROWID table known from other tables, where reading may
    resume past an unreadable stretch. estimate_lost=False: the caller counts the rows lost
    from this rowid table itself, exactly (stats.unreadable is then its to set)."""
    columns = _source_columns(src, table)
    if columns is None:
        stats.complete, stats.error = False, "table unreadable (schema or root page)"
        return
    view = table.only(columns)
    prober = Prober(src, view)
    insert = (f"INSERT OR IGNORE INTO {table.name} ({', '.join(columns)})"
              f" VALUES ({','.join('?' * len(columns))})")
    rows = prober.key_rows(known_keys) if table.key else (r[1:] for r in prober.rowid_rows())
    bad = 0
    for row in rows:
        if not view.valid(row) or dest.execute(insert, row).rowcount != 1:
            bad += 1
            continue
        stats.salvaged += 1
        on_row(dict(zip(columns, row, strict=True)), bool(prober.skipped))
    stats.complete = not prober.error and not bad
    stats.error = prober.error or (f"{bad} rows of the wrong shape" if bad else "")
    if prober.exhausted:
        stats.error += f" (gave up after {prober.probes} probes)"
    if table.key:
        stats.unreadable = prober.failed_keys + bad
    elif estimate_lost:
        _estimate_lost(stats, prober, bad)


def _estimate_lost(stats: TableSalvage, prober: Prober, bad: int) -> None:
    stats.unreadable = bad + sum(
        resume - max(start, 1) for start, resume in prober.skipped if resume is not None)
    if any(resume is None for _start, resume in prober.skipped):
        stats.error += " (the rest of the table was unreadable)"


def _source_columns(src: sqlite3.Connection, table: Table) -> list[str] | None:
    try:
        info = src.execute(f"PRAGMA table_info({table.name})").fetchall()
    except sqlite3.DatabaseError:
        return None
    have = {r[1] for r in info}
    if not have:
        return None
    return [c for c in table.columns if c in have]
