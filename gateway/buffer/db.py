"""SQLite plumbing: migrations, and one thread per connection.

The writer connection lives on its own single thread and every write is one function run there
inside `BEGIN IMMEDIATE ... COMMIT`, so a whole batch costs one thread hop. Work queued on that
thread runs to completion even if the awaiting task is cancelled: a commit is drained, never
abandoned half-way. Reads use a second connection on a second thread (WAL lets them proceed
while the writer commits).
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from gateway.buffer import recovery
from gateway.errors import MigrationError, StoreError

log = logging.getLogger(__name__)
T = TypeVar("T")

WAL_AUTOCHECKPOINT_PAGES = 10_000  # 4 KiB pages
_MIGRATION_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    path: Path


def migrations_dir() -> Path:
    packaged = Path(__file__).with_name("_migrations")  # wheel installs (see pyproject.toml)
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "migrations"


def discover_migrations(directory: Path | None = None) -> list[Migration]:
    directory = directory or migrations_dir()
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_RE.match(path.name)
        if not match:
            raise MigrationError(f"migration file {path.name} is not named NNNN_name.sql")
        found.append(Migration(int(match[1]), match[2], path))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise MigrationError(f"migrations must be numbered 1..n without gaps, found {versions}")
    return found


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def apply_migrations(conn: sqlite3.Connection, directory: Path | None = None) -> list[Migration]:
    """Apply pending migrations in order, each in its own transaction; return those applied."""
    available = discover_migrations(directory)
    current = schema_version(conn)
    if current > len(available):
        raise MigrationError(
            f"database schema is version {current} but this build knows only {len(available)}",
            hint="run a newer fleetgate, or restore a backup")
    applied = []
    for migration in available[current:]:
        sql = migration.path.read_text()
        try:
            conn.executescript(
                f"BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {migration.version};\nCOMMIT;")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise MigrationError(f"migration {migration.path.name} failed: {exc}") from exc
        log.info("applied migration %s", migration.path.name)
        applied.append(migration)
    return applied


def connect(path: Path, synchronous: Literal["full", "normal"] = "full") -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute("PRAGMA temp_store=MEMORY")
    conn.execute("PRAGMA cache_size=-65536")  # 64 MiB page cache: the hot tail of the buffer
    # Checkpoint the WAL into the file every ~40 MB instead of SQLite's 4 MB: each checkpoint
    # ends in an fsync of the database file inside some group commit, and on a shared disk
    # those were the commits that stalled 0.6-1.5 s (bench/latency.py: p99 over 800 ms in 3 of
    # 8 runs at 6,000 frames/s; with 10,000 pages 0 of 4). The WAL file grows to ~40 MB.
    conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
    return conn


class Database:
    def __init__(self, path: Path, synchronous: Literal["full", "normal"] = "full", *,
                 startup_check: recovery.StartupCheck = "quick",
                 endpoints: Sequence[str] = ()) -> None:
        self.path = path
        self._synchronous = synchronous
        self._startup_check: recovery.StartupCheck = startup_check
        self._endpoints = tuple(endpoints)  # whose cursors bound the frames a salvage expects
        # Set by open(): the recovery this start performed, and the newest one on record.
        self.recovery: recovery.Recovery | None = None
        self.last_recovery: dict[str, Any] | None = None
        self._writer_pool = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._reader_pool = ThreadPoolExecutor(1, thread_name_prefix="sqlite-reader")
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()

        def open_writer() -> sqlite3.Connection:
            # A damaged file is set aside and salvaged before anything writes to it.
            self.recovery = recovery.recover(
                self.path, migrate=apply_migrations, startup_check=self._startup_check,
                endpoints=self._endpoints)
            self.last_recovery = (self.recovery.as_dict() if self.recovery
                                  else recovery.last_report(self.path))
            conn = connect(self.path, self._synchronous)
            apply_migrations(conn)
            return conn

        self._writer = await loop.run_in_executor(self._writer_pool, open_writer)
        self._reader = await loop.run_in_executor(
            self._reader_pool, lambda: connect(self.path, self._synchronous))

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run fn(conn) in one IMMEDIATE transaction on the writer thread; commit or roll back."""
        conn = self._writer
        if conn is None:
            raise StoreError("database is not open")

        def run() -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return result

        try:
            # shield: a cancelled caller must not un-queue a write the thread has not started.
            return await asyncio.shield(
                asyncio.get_running_loop().run_in_executor(self._writer_pool, run))
        except sqlite3.Error as exc:
            # OperationalError covers disk full, I/O errors and lock timeouts: all may pass.
            retryable = isinstance(exc, sqlite3.OperationalError)
            full = "full" in str(exc).lower()
            raise StoreError(f"write to {self.path} failed: {exc}", retryable=retryable,
                             hint="free disk space on the data_dir volume" if full else "") from exc

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._reader
        if conn is None:
            raise StoreError("database is not open")
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._reader_pool, lambda: fn(conn))
        except sqlite3.Error as exc:
            raise StoreError(f"read from {self.path} failed: {exc}", retryable=True) from exc

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        if self._reader is not None:
            await loop.run_in_executor(self._reader_pool, self._reader.close)
            self._reader = None
        if self._writer is not None:
            writer = self._writer

            def close_writer() -> None:
                try:
                    writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error as exc:  # a busy checkpoint is harmless: WAL replays
                    log.warning("checkpoint at close failed: %s", exc)
                writer.close()

            await loop.run_in_executor(self._writer_pool, close_writer)
            self._writer = None
        self._writer_pool.shutdown(wait=True)
        self._reader_pool.shutdown(wait=True)
