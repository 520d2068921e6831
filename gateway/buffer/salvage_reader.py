"""Reading a damaged table: every readable row in key order, stepping over what cannot be read.

Generic: a table is described by its columns and key (`Table`), nothing here knows fleetgate's.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

# Effort bound per table: each unreadable stretch costs ~130 B-tree seeks to step over, so this
# caps a table's skipping at well under a second of work even on a wrecked file.
MAX_PROBES_PER_TABLE = 20_000
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

_PY_TYPES: dict[str, tuple[type, ...]] = {"INTEGER": (int,), "TEXT": (str,), "BLOB": (bytes,)}


@dataclass(slots=True)
class Table:
    name: str
    columns: list[str]
    types: list[str]
    notnull: list[bool]
    key: list[str]  # primary key columns of a WITHOUT ROWID table; [] for rowid tables

    def only(self, columns: Sequence[str]) -> Table:
        """The same table seen through some of its columns (those a source file has)."""
        at = [self.columns.index(c) for c in columns]
        return Table(self.name, list(columns), [self.types[i] for i in at],
                     [self.notnull[i] for i in at], self.key)

    def valid(self, row: Sequence[Any]) -> bool:
        """A damaged page can decode into rows of the wrong shape: never copy those."""
        for value, kind, notnull in zip(row, self.types, self.notnull, strict=True):
            if value is None:
                if notnull:
                    return False
            elif not isinstance(value, _PY_TYPES.get(kind, (object,))):
                return False
        return True


class Prober:
    """Reads a table in key order and steps over what cannot be read, within a probe budget."""

    def __init__(self, src: sqlite3.Connection, table: Table) -> None:
        self.src, self.table, self.columns = src, table, table.columns
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
    def key_rows(self, known: Collection[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
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
