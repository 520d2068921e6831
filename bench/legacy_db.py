"""The SQLite layer before aiosqlite (gateway/buffer/db.py at d6d5a40), for bench/ only.

Kept so that bench/throughput.py can measure the gateway on the old layer and on the new one in
the same run (`--sqlite-layers legacy,aiosqlite`; bench/gateway_launcher.py puts this class in
place of gateway.buffer.db.Database). Not shipped, not used by the gateway. Only the executor
is old (open/write/read/close below, as they were): the start-up check, PRAGMAs, migrations
and error mapping are the shipped ones, inherited, so the comparison is the thread hand-off
and nothing else.

One thread per connection: the writer connection lives on its own single thread and every write
is one function run there inside `BEGIN IMMEDIATE ... COMMIT`, so a whole batch costs one thread
hop. Work queued on that thread runs to completion even if the awaiting task is cancelled: a
commit is drained, never abandoned half-way. Reads use a second connection on a second thread.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from gateway.buffer import db
from gateway.errors import StoreError

log = logging.getLogger(__name__)
T = TypeVar("T")


class Database(db.Database):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._writer_pool = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._reader_pool = ThreadPoolExecutor(1, thread_name_prefix="sqlite-reader")
        self._writer_conn: sqlite3.Connection | None = None
        self._reader_conn: sqlite3.Connection | None = None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self._writer_conn = await loop.run_in_executor(self._writer_pool, self._open_writer)
        self._reader_conn = await loop.run_in_executor(
            self._reader_pool, lambda: db.connect(self.path, self._synchronous))

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run fn(conn) in one IMMEDIATE transaction on the writer thread; commit or roll back."""
        conn = self._writer_conn
        if conn is None:
            raise StoreError("database is not open")

        try:
            # shield: a cancelled caller must not un-queue a write the thread has not started.
            return await asyncio.shield(asyncio.get_running_loop().run_in_executor(
                self._writer_pool, db.run_in_transaction, conn, fn))
        except sqlite3.Error as exc:
            raise db.write_error(self.path, exc) from exc

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._reader_conn
        if conn is None:
            raise StoreError("database is not open")
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._reader_pool, lambda: fn(conn))
        except sqlite3.Error as exc:
            raise db.read_error(self.path, exc) from exc

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        if self._reader_conn is not None:
            await loop.run_in_executor(self._reader_pool, self._reader_conn.close)
            self._reader_conn = None
        if self._writer_conn is not None:
            writer = self._writer_conn

            def close_writer() -> None:
                try:
                    writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error as exc:  # a busy checkpoint is harmless: WAL replays
                    log.warning("checkpoint at close failed: %s", exc)
                writer.close()

            await loop.run_in_executor(self._writer_pool, close_writer)
            self._writer_conn = None
        self._writer_pool.shutdown(wait=True)
        self._reader_pool.shutdown(wait=True)
