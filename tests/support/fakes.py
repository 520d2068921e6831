"""Fakes of the gateway's seams: the MQTT side of the pipeline and a remote-write endpoint."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TypeVar

from gateway.buffer.db import apply_migrations
from gateway.errors import StoreError
from gateway.forward.client import Accepted, Rejected, Retryable, SendResult
from gateway.ingest.inbox import InboundMessage
from gateway.remote_write.wire import decode_write_request, decompress

T = TypeVar("T")


class FakeMqtt:
    def __init__(self) -> None:
        self.acked: list[InboundMessage] = []
        self.published: list[tuple[str, bytes]] = []
        self.ack_calls = 0

    def ack(self, messages: list[InboundMessage]) -> int:
        self.ack_calls += 1
        self.acked.extend(messages)
        return len(messages)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self.published.append((topic, payload))


class FakeRemoteWrite:
    """Records every request; `respond` decides the outcome from the decoded series."""

    endpoint = "fake://endpoint"

    def __init__(self, respond: Callable[[list[tuple[dict[str, str], list[tuple[float, int]]]]],
                                         SendResult] | None = None) -> None:
        self.requests: list[list[tuple[dict[str, str], list[tuple[float, int]]]]] = []
        self.accepted: list[tuple[dict[str, str], list[tuple[float, int]]]] = []
        self._respond = respond or (lambda series: Accepted(204))
        self.closed = False

    async def send(self, compressed_body: bytes) -> SendResult:
        series = decode_write_request(decompress(compressed_body))
        self.requests.append(series)
        result = self._respond(series)
        if isinstance(result, Accepted):
            self.accepted.extend(series)
        return result

    async def aclose(self) -> None:
        self.closed = True


class MemoryStore:
    """The buffer's database (gateway.buffer.db.Database's read/write) in memory with the real
    migrations, on the caller's thread; while `full` is set every write fails like SQLite on
    a full disk. `writes` counts the transactions that committed."""

    def __init__(self) -> None:
        self.conn = sqlite3.connect(":memory:", isolation_level=None)
        apply_migrations(self.conn)
        self.full = False
        self.writes = 0

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self.full:
            raise StoreError("database or disk is full", retryable=True)
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(self.conn)
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        self.writes += 1
        return result

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return fn(self.conn)

    def rows(self, sql: str) -> list[tuple[object, ...]]:
        return self.conn.execute(sql).fetchall()


__all__ = ["Accepted", "FakeMqtt", "FakeRemoteWrite", "MemoryStore", "Rejected", "Retryable"]
