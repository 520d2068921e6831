"""The SQLite layer before aiosqlite (gateway/buffer/db.py at d6d5a40), for bench/ only.

Kept so that bench/throughput.py can measure the gateway on the old layer and on the new one in
the same run (`--sqlite-layers legacy,aiosqlite`; bench/gateway_launcher.py puts this class in
place of gateway.buffer.db.Database). Not shipped, not used by the gateway. Only the executor
is old: migrations, PRAGMAs and the start-up check are the shipped ones, so the comparison is
the thread hand-off and nothing else.

One thread per connection: the writer connection lives on its own single thread and every write
is one function run there inside `BEGIN IMMEDIATE ... COMMIT`, so a whole batch costs one thread
hop. Work queued on that thread runs to completion even if the awaiting task is cancelled: a
commit is drained, never abandoned half-way. Reads use a second connection on a second thread.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar

from gateway.buffer import recovery
from gateway.buffer.db import apply_migrations, connect
from gateway.errors import StoreError

log = logging.getLogger(__name__)
T = TypeVar("T")


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
