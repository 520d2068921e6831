"""SQLite's file format, as far as the start-up check and the salvage need it.

Generic: nothing here knows fleetgate's tables. `check` decides whether a database file set
(db, -wal) is usable; a missing file is not damage. Truncation and a bad WAL header are read
from the bytes themselves (file format, sections 1.3 and 4.1), so they are caught even with
the check off, and a read-only connection never changes the files by looking.
"""

from __future__ import annotations

import sqlite3
import struct
from pathlib import Path
from typing import Literal

StartupCheck = Literal["quick", "off"]
HEADER_BYTES = 100
MAGIC = b"SQLite format 3\x00"
WAL_MAGIC = (0x377F0682, 0x377F0683)


def sibling(path: Path, suffix: str) -> Path:
    """The file beside path whose name is path's name plus suffix ("-wal", "-shm", ...)."""
    return path.with_name(path.name + suffix)


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


def connect_ro(path: Path, *, lenient: bool = False) -> sqlite3.Connection:
    # mode=ro: a read-only connection never checkpoints, so the files are not changed by looking
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                           check_same_thread=False)
    if lenient:  # salvage: read a file shorter than its header says instead of refusing it
        conn.execute("PRAGMA writable_schema=ON")
    return conn


def check(path: Path, startup_check: StartupCheck = "quick") -> str | None:
    """What is wrong with the database at path, or None if it is usable (or absent)."""
    wal = sibling(path, "-wal")
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
        conn = connect_ro(path)
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
    header = read_header(path)
    page_size = header_page_size(header)
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


def read_header(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(HEADER_BYTES)


def header_page_size(header: bytes) -> int | None:
    if len(header) < HEADER_BYTES or not header.startswith(MAGIC):
        return None
    value = struct.unpack(">H", header[16:18])[0]
    return 65536 if value == 1 else value


def write_header(db: Path, page_size: int, *, wal_mode: bool) -> None:
    """A minimal valid header: the in-header size is left invalid so SQLite takes the file's
    size; no freelist; UTF-8; schema format 4 (file format, section 1.3)."""
    version = 2 if wal_mode else 1
    header = bytearray(HEADER_BYTES)
    header[0:16] = MAGIC
    header[16:18] = struct.pack(">H", 1 if page_size == 65536 else page_size)
    header[18:24] = bytes([version, version, 0, 64, 32, 32])
    struct.pack_into(">I", header, 24, 1)  # change counter != version-valid-for: size invalid
    struct.pack_into(">I", header, 40, 1)  # schema cookie
    struct.pack_into(">I", header, 44, 4)  # schema format
    struct.pack_into(">I", header, 56, 1)  # UTF-8
    with db.open("r+b") as f:
        f.write(header)
