"""gateway.buffer.db on real SQLite files: migrations, pragmas, the writer/reader connections.

pytest-asyncio is not used: each test drives its own loop with asyncio.run.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal, TypeVar

import pytest

from gateway.buffer import db as dbmod
from gateway.buffer.db import (
    Database,
    apply_migrations,
    connect,
    discover_migrations,
    schema_version,
)
from gateway.errors import MigrationError, StoreError

T = TypeVar("T")
WAIT_S = 10.0  # generous bound for a thread hand-off on a loaded CI machine


def run_with_db(path: Path, body: Callable[[Database], Awaitable[T]],
                synchronous: Literal["full", "normal"] = "full") -> T:
    async def main() -> T:
        database = Database(path, synchronous)
        await database.open()
        try:
            return await body(database)
        finally:
            await database.close()

    return asyncio.run(main())


def tables(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {name for (name,) in rows if not name.startswith("sqlite_")}


def write_migrations(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, sql in files.items():
        (directory / name).write_text(sql)
    return directory


# ---------------------------------------------------------------------------- migrations
def test_shipped_migrations_apply_once_and_are_idempotent(tmp_path: Path) -> None:
    shipped = discover_migrations()
    assert [m.version for m in shipped] == list(range(1, len(shipped) + 1))
    conn = connect(tmp_path / "f.db")
    try:
        assert schema_version(conn) == 0
        applied = apply_migrations(conn)
        assert applied == shipped
        assert schema_version(conn) == len(shipped)
        assert {"frames", "births", "held", "ledger", "cursors", "devices", "quarantine",
                "dead_letters", "counters"} <= tables(conn)
        assert apply_migrations(conn) == []
        assert schema_version(conn) == len(shipped)
    finally:
        conn.close()


def test_only_pending_migrations_are_applied(tmp_path: Path) -> None:
    migrations = write_migrations(tmp_path / "m", {
        "0001_first.sql": "CREATE TABLE a (x INTEGER);",
        "0002_second.sql": "CREATE TABLE b (x INTEGER);",
    })
    conn = connect(tmp_path / "f.db")
    try:
        assert [m.name for m in apply_migrations(conn, migrations)] == ["first", "second"]
        conn.execute("INSERT INTO a VALUES (1)")
        write_migrations(migrations, {"0003_third.sql": "ALTER TABLE a ADD COLUMN y TEXT;"})
        assert [m.version for m in apply_migrations(conn, migrations)] == [3]
        assert schema_version(conn) == 3
        assert conn.execute("SELECT x, y FROM a").fetchall() == [(1, None)]
    finally:
        conn.close()


def test_schema_newer_than_the_build_is_refused(tmp_path: Path) -> None:
    conn = connect(tmp_path / "f.db")
    try:
        conn.execute(f"PRAGMA user_version = {len(discover_migrations()) + 1}")
        with pytest.raises(MigrationError, match="newer fleetgate") as info:
            apply_migrations(conn)
        assert "this build knows only" in str(info.value)
        assert tables(conn) == set()  # nothing was touched
    finally:
        conn.close()


@pytest.mark.parametrize("files", [
    {"0001_a.sql": "SELECT 1;", "0003_c.sql": "SELECT 1;"},   # gap
    {"0002_b.sql": "SELECT 1;"},                              # does not start at 1
    {"0001_a.sql": "SELECT 1;", "0001_b.sql": "SELECT 1;"},   # same number twice
], ids=["gap", "starts-at-2", "duplicate-number"])
def test_badly_numbered_migration_dir_is_refused(tmp_path: Path, files: dict[str, str]) -> None:
    directory = write_migrations(tmp_path / "m", files)
    with pytest.raises(MigrationError, match=re.escape("numbered 1..n")):
        discover_migrations(directory)
    conn = connect(tmp_path / "f.db")
    try:
        with pytest.raises(MigrationError):
            apply_migrations(conn, directory)
        assert schema_version(conn) == 0
    finally:
        conn.close()


@pytest.mark.parametrize("name", ["1_init.sql", "0001-init.sql", "0001_Init.sql",
                                  "00001_init.sql", "0001_.sql"])
def test_badly_named_migration_file_is_refused_by_name(tmp_path: Path, name: str) -> None:
    directory = write_migrations(tmp_path / "m", {name: "SELECT 1;"})
    with pytest.raises(MigrationError, match=re.escape(f"{name} is not named NNNN_name.sql")):
        discover_migrations(directory)


def test_non_sql_files_in_the_migration_dir_are_ignored(tmp_path: Path) -> None:
    directory = write_migrations(tmp_path / "m", {"0001_a.sql": "SELECT 1;",
                                                  "README.md": "notes"})
    assert [m.name for m in discover_migrations(directory)] == ["a"]


def test_failing_migration_rolls_back_entirely(tmp_path: Path) -> None:
    directory = write_migrations(tmp_path / "m", {
        "0001_ok.sql": "CREATE TABLE a (x INTEGER);",
        "0002_broken.sql": "CREATE TABLE b (x INTEGER);\nCREATE TABLE a (x INTEGER);",
    })
    conn = connect(tmp_path / "f.db")
    try:
        with pytest.raises(MigrationError, match=re.escape("0002_broken.sql failed")):
            apply_migrations(conn, directory)
        assert schema_version(conn) == 1  # the good one stays applied
        assert tables(conn) == {"a"}  # nothing of the broken one, not even its first table
        assert not conn.in_transaction
    finally:
        conn.close()


def test_migrations_dir_points_at_the_repository_files() -> None:
    assert (dbmod.migrations_dir() / "0001_initial.sql").is_file()


# ---------------------------------------------------------------------------- pragmas
@pytest.mark.parametrize(("synchronous", "level"), [("full", 2), ("normal", 1)])
def test_wal_and_synchronous_are_in_effect_on_both_connections(
        tmp_path: Path, synchronous: Literal["full", "normal"], level: int) -> None:
    def pragmas(conn: sqlite3.Connection) -> tuple[str, int, int]:
        return (conn.execute("PRAGMA journal_mode").fetchone()[0],
                conn.execute("PRAGMA synchronous").fetchone()[0],
                conn.execute("PRAGMA busy_timeout").fetchone()[0])

    async def body(database: Database) -> tuple[object, object]:
        # The writer runs inside BEGIN IMMEDIATE: pragmas are still readable there.
        return await database.write(pragmas), await database.read(pragmas)

    writer, reader = run_with_db(tmp_path / "f.db", body, synchronous)
    assert writer == ("wal", level, 10000)
    assert reader == ("wal", level, 10000)


def test_open_applies_the_migrations(tmp_path: Path) -> None:
    async def body(database: Database) -> int:
        return await database.read(schema_version)

    assert run_with_db(tmp_path / "f.db", body) == len(discover_migrations())


def test_data_survives_close_and_reopen_and_close_truncates_the_wal(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "f.db"  # the parent directory is created on demand

    async def put(database: Database) -> None:
        await database.write(lambda c: c.execute("INSERT INTO counters VALUES ('x', 7)"))

    run_with_db(path, put)
    wal = path.with_name(path.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0

    async def get(database: Database) -> list[tuple[str, int]]:
        return await database.read(lambda c: c.execute("SELECT * FROM counters").fetchall())

    assert run_with_db(path, get) == [("x", 7)]


# ---------------------------------------------------------------------------- write/read
def test_write_commits_and_returns_the_result(tmp_path: Path) -> None:
    async def body(database: Database) -> tuple[int, list[tuple[str, int]]]:
        def insert(conn: sqlite3.Connection) -> int:
            assert conn.in_transaction  # inside BEGIN IMMEDIATE
            return conn.execute("INSERT INTO counters VALUES ('a', 1)").rowcount

        count = await database.write(insert)
        rows = await database.read(lambda c: c.execute("SELECT * FROM counters").fetchall())
        return count, rows

    assert run_with_db(tmp_path / "f.db", body) == (1, [("a", 1)])


def test_write_rolls_back_when_fn_raises(tmp_path: Path) -> None:
    class Boom(Exception):
        pass

    async def body(database: Database) -> list[tuple[str, int]]:
        def half_done(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO counters VALUES ('a', 1)")
            conn.execute("INSERT INTO counters VALUES ('b', 2)")
            raise Boom

        with pytest.raises(Boom):  # not a sqlite error: passed through unchanged
            await database.write(half_done)
        # The writer is usable again: no transaction was left open.
        await database.write(lambda c: c.execute("INSERT INTO counters VALUES ('c', 3)"))
        return await database.read(lambda c: c.execute("SELECT * FROM counters").fetchall())

    assert run_with_db(tmp_path / "f.db", body) == [("c", 3)]


def test_sqlite_errors_become_store_errors_and_roll_back(tmp_path: Path) -> None:
    async def body(database: Database) -> None:
        def duplicate_key(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO counters VALUES ('a', 1)")
            conn.execute("INSERT INTO counters VALUES ('a', 2)")

        with pytest.raises(StoreError) as info:
            await database.write(duplicate_key)
        assert isinstance(info.value.__cause__, sqlite3.IntegrityError)
        assert not info.value.retryable  # the same batch would fail the same way
        assert str(database.path) in str(info.value)

        with pytest.raises(StoreError) as info:
            await database.write(lambda c: c.execute("INSERT INTO nowhere VALUES (1)"))
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
        assert info.value.retryable

        with pytest.raises(StoreError) as info:
            await database.read(lambda c: c.execute("SELECT * FROM nowhere").fetchall())
        assert info.value.retryable

        count = await database.read(lambda c: c.execute("SELECT COUNT(*) FROM counters")
                                    .fetchone()[0])
        assert count == 0

    run_with_db(tmp_path / "f.db", body)


def test_unopened_database_refuses_work(tmp_path: Path) -> None:
    async def body() -> None:
        database = Database(tmp_path / "f.db")
        with pytest.raises(StoreError, match="not open"):
            await database.write(lambda c: None)
        with pytest.raises(StoreError, match="not open"):
            await database.read(lambda c: None)

    asyncio.run(body())


def test_reads_proceed_while_a_write_transaction_is_open(tmp_path: Path) -> None:
    inside = threading.Event()
    release = threading.Event()

    async def body(database: Database) -> tuple[int, int]:
        def slow_write(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO counters VALUES ('a', 1)")
            inside.set()
            assert release.wait(WAIT_S)

        writing = asyncio.create_task(database.write(slow_write))
        assert await asyncio.to_thread(inside.wait, WAIT_S)
        try:  # WAL: the reader sees the last commit, without waiting for the writer
            during = await asyncio.wait_for(database.read(
                lambda c: c.execute("SELECT COUNT(*) FROM counters").fetchone()[0]), WAIT_S)
        finally:
            release.set()
        await writing
        after = await database.read(
            lambda c: c.execute("SELECT COUNT(*) FROM counters").fetchone()[0])
        return during, after

    assert run_with_db(tmp_path / "f.db", body) == (0, 1)


# ---------------------------------------------------------------------------- cancellation
def test_running_write_completes_when_its_awaiter_is_cancelled(tmp_path: Path) -> None:
    inside = threading.Event()
    release = threading.Event()

    async def body(database: Database) -> list[tuple[str, int]]:
        def slow_write(conn: sqlite3.Connection) -> None:
            inside.set()
            assert release.wait(WAIT_S)
            conn.execute("INSERT INTO counters VALUES ('landed', 1)")

        task = asyncio.create_task(database.write(slow_write))
        assert await asyncio.to_thread(inside.wait, WAIT_S)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
        await database.write(lambda c: None)  # the writer thread is FIFO: a barrier
        return await database.read(lambda c: c.execute("SELECT * FROM counters").fetchall())

    assert run_with_db(tmp_path / "f.db", body) == [("landed", 1)]


def test_queued_write_still_runs_when_its_awaiter_is_cancelled(tmp_path: Path) -> None:
    # db.py promises "work queued on that thread runs to completion even if the awaiting task
    # is cancelled": a write waiting behind another one must not be silently dropped either.
    inside = threading.Event()
    release = threading.Event()

    async def body(database: Database) -> list[tuple[str, int]]:
        def blocker(conn: sqlite3.Connection) -> None:
            inside.set()
            assert release.wait(WAIT_S)

        first = asyncio.create_task(database.write(blocker))
        assert await asyncio.to_thread(inside.wait, WAIT_S)
        queued = asyncio.create_task(database.write(
            lambda c: c.execute("INSERT INTO counters VALUES ('queued', 1)")))
        await asyncio.sleep(0)  # one loop turn: the queued write reaches the executor
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        release.set()
        await first
        await database.write(lambda c: None)  # barrier
        return await database.read(lambda c: c.execute("SELECT * FROM counters").fetchall())

    assert run_with_db(tmp_path / "f.db", body) == [("queued", 1)]


def _collect_loop_errors(errors: list[dict[str, object]]) -> None:
    """Send the running loop's unhandled-error reports (a result never retrieved) to errors."""
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))


def _insert(name: str, value: int) -> Callable[[sqlite3.Connection], object]:
    return lambda conn: conn.execute("INSERT INTO counters VALUES (?, ?)", (name, value))


async def _cancel_mid_write(database: Database, before: Callable[[sqlite3.Connection], object],
                            after: Callable[[sqlite3.Connection], object]) -> threading.Event:
    """Start a write that runs `before`, then waits; cancel its caller there (the caller sees
    CancelledError). Returns the event that lets the write go on to `after`."""
    inside = threading.Event()
    release = threading.Event()

    def write(conn: sqlite3.Connection) -> None:
        before(conn)
        inside.set()
        assert release.wait(WAIT_S)
        after(conn)

    task = asyncio.create_task(database.write(write))
    assert await asyncio.to_thread(inside.wait, WAIT_S)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return release


def test_cancelled_write_commits_all_of_its_transaction_not_part(tmp_path: Path) -> None:
    # Cancelled between two statements of one transaction: a reader meanwhile sees none of it,
    # afterwards all of it, and the next write works.
    errors: list[dict[str, object]] = []

    def count(conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT COUNT(*) FROM counters").fetchone()[0])

    async def body(database: Database) -> tuple[int, list[tuple[str, int]]]:
        _collect_loop_errors(errors)
        release = await _cancel_mid_write(database, _insert("first", 1), _insert("second", 2))
        try:
            during = await asyncio.wait_for(database.read(count), WAIT_S)
        finally:
            release.set()
        await database.write(_insert("next", 3))
        return during, await database.read(
            lambda c: c.execute("SELECT * FROM counters ORDER BY value").fetchall())

    during, rows = run_with_db(tmp_path / "f.db", body)
    assert during == 0
    assert rows == [("first", 1), ("second", 2), ("next", 3)]
    assert errors == []


def test_cancelled_write_that_then_fails_leaves_nothing_and_the_next_write_works(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Cancelled mid-transaction, after one statement ran; the rest then fails: the statement
    # before the cancel is rolled back too, the failure is logged once by the database (not as
    # an unretrieved task error), and the writer takes the next transaction.
    errors: list[dict[str, object]] = []

    class Boom(Exception):
        pass

    def fail(conn: sqlite3.Connection) -> None:
        raise Boom

    async def body(database: Database) -> list[tuple[str, int]]:
        _collect_loop_errors(errors)
        release = await _cancel_mid_write(database, _insert("first", 1), fail)
        release.set()
        await database.write(_insert("next", 2))
        assert await database.write(lambda c: c.in_transaction)  # a fresh transaction
        return await database.read(lambda c: c.execute("SELECT * FROM counters").fetchall())

    assert run_with_db(tmp_path / "f.db", body) == [("next", 2)]
    assert errors == []
    assert [r.getMessage() for r in caplog.records if r.name == dbmod.__name__] == [
        "a write whose caller was cancelled failed and was rolled back: Boom()"]


def test_sqlite_error_mid_transaction_rolls_back_the_statements_before_it(tmp_path: Path) -> None:
    async def body(database: Database) -> list[tuple[str, int]]:
        await database.write(lambda c: c.execute("INSERT INTO counters VALUES ('kept', 1)"))

        def then_fails(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE counters SET value = 99")
            conn.execute("INSERT INTO counters VALUES ('new', 2)")
            conn.execute("INSERT INTO counters VALUES ('kept', 3)")  # primary key taken

        with pytest.raises(StoreError) as info:
            await database.write(then_fails)
        assert isinstance(info.value.__cause__, sqlite3.IntegrityError)
        await database.write(lambda c: c.execute("INSERT INTO counters VALUES ('after', 4)"))
        return await database.read(
            lambda c: c.execute("SELECT * FROM counters ORDER BY value").fetchall())

    assert run_with_db(tmp_path / "f.db", body) == [("kept", 1), ("after", 4)]


def test_closed_database_refuses_work(tmp_path: Path) -> None:
    async def body() -> None:
        database = Database(tmp_path / "f.db")
        await database.open()
        await database.close()
        with pytest.raises(StoreError, match="not open"):
            await database.write(lambda c: None)
        with pytest.raises(StoreError, match="not open"):
            await database.read(lambda c: None)
        await database.close()  # twice is harmless

    asyncio.run(body())


def test_database_left_open_is_closed_when_the_loop_ends(tmp_path: Path) -> None:
    # aiosqlite's threads are not daemon threads: a Database that a failed shutdown left open
    # would keep the process from exiting. asyncio.run cancels what is left at its end; the
    # database closes then (threads gone, WAL checkpointed), as the old executor's threads
    # ended at exit.
    path = tmp_path / "f.db"
    left_open: list[Database] = []
    before = set(threading.enumerate())

    async def body() -> None:
        database = Database(path)
        await database.open()
        await database.write(_insert("x", 1))
        left_open.append(database)  # still referenced: nothing closes it by being collected

    asyncio.run(body())
    started = [t for t in set(threading.enumerate()) - before if t.name.startswith("sqlite-")]
    for thread in started:  # each may still be handing its last result to the closed loop
        thread.join(WAIT_S)
    assert [t.name for t in started if t.is_alive()] == []
    wal = path.with_name(path.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    with pytest.raises(StoreError, match="not open"):
        asyncio.run(left_open[0].read(lambda c: None))
