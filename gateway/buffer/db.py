"""SQLite plumbing: migrations, and the buffer's two connections on aiosqlite.

Each connection is an aiosqlite connection: one thread owns it and runs what is queued for it
in order. Callers hand `Database.write`/`read` a plain function of a `sqlite3.Connection`
(gateway/buffer/store.py); the whole function runs on that thread in one hop, a write inside
`BEGIN IMMEDIATE ... COMMIT` (one group commit is one transaction). A write is shielded: once
queued it runs to completion, committed or rolled back, even if its awaiting task is
cancelled, so a commit is drained, never abandoned half-way. Reads use the second connection
(WAL lets them proceed while the writer commits).

One hop per unit of work, through aiosqlite's public API only. aiosqlite (0.22) runs its own
per-statement methods on its thread (`execute`, `executemany`, `commit`, ...) but has no public
method that takes a callable (checked against the installed source and its docs/api.rst; users
who reached for the private `Connection._execute` were given new per-method wrappers instead,
omnilib/aiosqlite#54/#58). A hop per statement would mean rewriting the sync store functions as
coroutines, or bridging them (greenlet, as SQLAlchemy's aiosqlite dialect does) so that their
Python runs on the event loop between hops; and it costs a thread hand-off per statement. So:
- the connection is made by our own connector (`aiosqlite.Connection(connector, ...)`, the
  documented constructor), which runs on aiosqlite's thread: the start-up check and salvage,
  the PRAGMAs and the migrations run there, as they did on the old writer thread; it also
  registers one SQL function, `fleetgate_unit(id)`, on the sqlite3 connection;
- a unit of work is one public `execute_fetchall("SELECT fleetgate_unit(?)", (id,))`: SQLite
  calls the function on aiosqlite's thread, and it runs fn(conn) (for a write inside
  BEGIN IMMEDIATE ... COMMIT) on that same connection. SQLite lets an application-defined
  function run other statements on its own connection (it must only not close it or reset the
  calling statement; sqlite.org/c3ref/create_function.html), and the outer SELECT reads no
  table, so it opens no read transaction of its own: fn sees the connection as a direct call
  would. The function never raises into SQLite: fn's result or exception is handed back to
  the awaiting side unchanged, so a sqlite3 error keeps its type (and its mapping to
  StoreError below) and any other exception passes through as before.
Measured against the previous hand-written executor in one run: bench/RESULTS.md,
section "sqlite-layer".
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import re
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar, cast

import aiosqlite

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


UNIT_FUNCTION = "fleetgate_unit"  # the SQL function that runs one unit of work (see above)
_RUN_UNIT = f"SELECT {UNIT_FUNCTION}(?)"
ITER_CHUNK_SIZE = 64  # aiosqlite's default; unused here, units hand back their result whole


@dataclass(slots=True)
class _Unit(Generic[T]):
    """One function to run on a connection's thread, and what came of it."""

    fn: Callable[[sqlite3.Connection], T]
    transaction: bool
    done: bool = False
    result: T | None = None
    error: BaseException | None = None


def run_in_transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """fn(conn) inside BEGIN IMMEDIATE ... COMMIT; ROLLBACK on any error, which is re-raised."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


class _Units:
    """Units of work queued on the connections, found by the id passed to fleetgate_unit."""

    def __init__(self) -> None:
        self._pending: dict[int, _Unit[Any]] = {}
        self._ids = itertools.count(1)

    def install(self, conn: sqlite3.Connection) -> sqlite3.Connection:
        """Register fleetgate_unit on conn; called on the connection's own thread."""
        conn.create_function(UNIT_FUNCTION, 1, functools.partial(self._run, conn))
        return conn

    def _run(self, conn: sqlite3.Connection, unit_id: int) -> None:
        unit = self._pending.pop(unit_id)
        try:
            unit.result = (run_in_transaction(conn, unit.fn) if unit.transaction
                           else unit.fn(conn))
        except BaseException as exc:  # handed to the awaiting side, never raised into SQLite
            unit.error = exc
        unit.done = True

    async def run(self, conn: aiosqlite.Connection, fn: Callable[[sqlite3.Connection], T], *,
                  transaction: bool) -> T:
        unit: _Unit[T] = _Unit(fn, transaction)
        unit_id = next(self._ids)
        self._pending[unit_id] = unit
        try:
            await conn.execute_fetchall(_RUN_UNIT, (unit_id,))
        except asyncio.CancelledError:
            raise  # an unshielded read whose awaiter left: the queued unit runs and is dropped
        except BaseException:
            self._pending.pop(unit_id, None)
            if not unit.done:
                raise
        error, unit.error = unit.error, None
        if error is not None:
            raise error
        return cast(T, unit.result)


def write_error(path: Path, exc: sqlite3.Error) -> StoreError:
    # OperationalError covers disk full, I/O errors and lock timeouts: all may pass.
    retryable = isinstance(exc, sqlite3.OperationalError)
    full = "full" in str(exc).lower()
    return StoreError(f"write to {path} failed: {exc}", retryable=retryable,
                      hint="free disk space on the data_dir volume" if full else "")


def read_error(path: Path, exc: sqlite3.Error) -> StoreError:
    return StoreError(f"read from {path} failed: {exc}", retryable=True)


def _report_orphan_failure(task: asyncio.Task[Any]) -> None:
    """Log how a write ended that failed after its caller was cancelled (nobody else can)."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("a write whose caller was cancelled failed and was rolled back: %r", exc)


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
        self._units = _Units()
        self._writes: set[asyncio.Task[Any]] = set()  # in flight, whether awaited or not
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._closer: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self._writer = await self._connect("sqlite-writer", self._open_writer)
        self._closer = asyncio.create_task(self._close_when_the_loop_ends(), name="sqlite-closer")
        self._reader = await self._connect("sqlite-reader",
                                           lambda: connect(self.path, self._synchronous))

    async def _close_when_the_loop_ends(self) -> None:
        """Close the database if the loop winds down with it open (asyncio.run cancels what is
        left): aiosqlite's threads are not daemon threads, so a Database that a failed shutdown
        left open would keep the process from ever exiting (the old executor's threads ended
        at exit). Checked by tests/stages/test_db.py."""
        try:
            await asyncio.Event().wait()  # until cancelled
        except asyncio.CancelledError:
            if self._closer is asyncio.current_task():  # not cancelled by close() itself
                await self.close()
            raise

    def _open_writer(self) -> sqlite3.Connection:
        # A damaged file is set aside and salvaged before anything writes to it.
        self.recovery = recovery.recover(
            self.path, migrate=apply_migrations, startup_check=self._startup_check,
            endpoints=self._endpoints)
        self.last_recovery = (self.recovery.as_dict() if self.recovery
                              else recovery.last_report(self.path))
        conn = connect(self.path, self._synchronous)
        apply_migrations(conn)
        return conn

    async def _connect(self, name: str,
                       opener: Callable[[], sqlite3.Connection]) -> aiosqlite.Connection:
        """An aiosqlite connection whose thread first runs opener (check, PRAGMAs, migrations)."""

        def connector() -> sqlite3.Connection:
            # Runs on the connection's thread: named for py-spy profiles and thread dumps
            # (bench/profile_summary.py groups by it), as the old executor's threads were.
            threading.current_thread().name = name
            return self._units.install(opener())

        return await aiosqlite.Connection(connector, ITER_CHUNK_SIZE)

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run fn(conn) in one IMMEDIATE transaction on the writer's thread; commit or roll back."""
        conn = self._writer
        if conn is None:
            raise StoreError("database is not open")
        # Its own task, held here: a cancelled caller neither un-queues the transaction nor
        # stops it half-way (shield); it runs to COMMIT, or to ROLLBACK on error.
        task = asyncio.create_task(self._units.run(conn, fn, transaction=True),
                                   name="sqlite-write")
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(_report_orphan_failure)
            raise
        except sqlite3.Error as exc:
            raise write_error(self.path, exc) from exc

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._reader
        if conn is None:
            raise StoreError("database is not open")
        try:
            return await self._units.run(conn, fn, transaction=False)
        except sqlite3.Error as exc:
            raise read_error(self.path, exc) from exc

    async def close(self) -> None:
        """Reader first, then the writer: what is queued on it runs, the WAL is checkpointed."""
        closer, self._closer = self._closer, None
        if closer is not None and closer is not asyncio.current_task():
            closer.cancel()
        if self._reader is not None:
            reader, self._reader = self._reader, None
            await reader.close()
        if self._writer is not None:
            writer, self._writer = self._writer, None
            try:
                await writer.execute_fetchall("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:  # a busy checkpoint is harmless: WAL replays
                log.warning("checkpoint at close failed: %s", exc)
            await writer.close()
