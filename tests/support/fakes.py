"""Fakes of the gateway's seams: the MQTT side of the pipeline and a remote-write endpoint."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TypeVar

from gateway.buffer.db import apply_migrations
from gateway.errors import StoreError
from gateway.forward.client import Accepted, Rejected, Retryable, SendResult
from gateway.ingest.inbox import InboundMessage, Inbox
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


class FakeIngest:
    """MqttIngest at its seam, built as Gateway.start() builds it (config, inbox,
    on_connection_change): `deliver` puts messages in the inbox as paho's thread does; start,
    stop and ack are appended to `calls` (a timeline the test may share with other fakes),
    and `on_start`/`on_ack` let a test look at the world at that moment."""

    def __init__(self, config: object, inbox: Inbox, *,
                 on_connection_change: Callable[[bool], None] | None = None,
                 calls: list[str] | None = None, on_start: Callable[[], None] | None = None,
                 on_ack: Callable[[list[InboundMessage]], None] | None = None) -> None:
        self.inbox = inbox
        self.calls = calls if calls is not None else []
        self.connected = False
        self.acked: list[InboundMessage] = []
        self.published: list[tuple[str, bytes]] = []
        self._on_connection_change = on_connection_change
        self._on_start = on_start
        self._on_ack = on_ack

    def start(self) -> None:
        self.calls.append("mqtt start")
        if self._on_start is not None:
            self._on_start()
        self._set_connected(True)

    async def stop(self, timeout_s: float = 5.0) -> None:
        self.calls.append("ingest stop")
        self.inbox.close()  # what is not in hand stays at the broker
        self._set_connected(False)

    def deliver(self, *messages: InboundMessage) -> None:
        for message in messages:
            assert self.inbox.put(message), "the inbox is closed"

    def ack(self, messages: list[InboundMessage]) -> int:
        self.calls.append(f"ack {len(messages)}")
        if self._on_ack is not None:
            self._on_ack(messages)
        self.acked.extend(messages)
        self.inbox.release(len(messages))
        return len(messages)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self.published.append((topic, payload))

    def _set_connected(self, connected: bool) -> None:
        self.connected = connected
        if self._on_connection_change is not None:
            self._on_connection_change(connected)


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


__all__ = ["Accepted", "FakeIngest", "FakeMqtt", "FakeRemoteWrite", "MemoryStore", "Rejected",
           "Retryable"]
