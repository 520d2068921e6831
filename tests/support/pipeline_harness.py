"""Shared set-up for pipeline and forwarder tests: a Pipeline on a real SQLite file."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import tests.support.factories as f
from device_protocol import Limits
from gateway.buffer import store
from gateway.buffer.buffer import Buffer
from gateway.buffer.db import Database
from gateway.buffer.entry_cache import EntryCache
from gateway.fleet.state import FleetState
from gateway.ingest.inbox import InboundMessage
from gateway.metrics import GatewayMetrics
from gateway.pipeline.frame_compiler import FrameCompiler
from gateway.pipeline.readback import stored_frame_decoder
from gateway.pipeline.stage import Pipeline
from gateway.pipeline.state import restore_state
from gateway.remote_write.series import SeriesEncoder
from gateway.settings import StoreConfig
from tests.support.fakes import FakeMqtt

_mid = iter(range(1, 10**9))


def msg(topic: str, payload: bytes) -> InboundMessage:
    return InboundMessage(topic, payload, next(_mid), 1, 1, f.now_ms())


def birth_msg(i: int, **kw: Any) -> InboundMessage:
    return msg(f"fleet/{f.device_id(i)}/birth", f.birth_payload(i, **kw))


def tele_msg(i: int, seq: int, base_ms: int, **kw: Any) -> InboundMessage:
    return msg(f"fleet/{f.device_id(i)}/telemetry",
               f.telemetry_payload(i, seq, base_ms=base_ms, **kw))


class _CommitLog:
    """A reader of the buffer that records each committed position it is woken for."""

    cursor = 0
    retrying = True  # never holds ingest

    def __init__(self, buffer: Buffer, log: list[int]) -> None:
        self._buffer, self._log = buffer, log

    def notify(self) -> None:
        self._log.append(self._buffer.committed_upto)


class Harness:
    def __init__(self, path: Path, *, max_bytes: int = 10**9, policy: str = "block") -> None:
        self.path = path
        self.config = StoreConfig(db_path=path, synchronous="normal", commit_max_frames=1000,
                                  commit_max_delay_s=0.0, max_buffer_bytes=max_bytes,
                                  full_policy=policy, ledger_max_ranges=100)  # type: ignore[arg-type]
        self.mqtt = FakeMqtt()
        self.metrics = GatewayMetrics()
        self.cache = EntryCache()
        self.committed: list[int] = []

    async def open(self, db: Database | None = None) -> Pipeline:
        self.db = db or Database(self.path, "normal")
        await self.db.open()
        state = await self.db.read(store.load_state)
        restored = restore_state(state, 100)
        compiler = FrameCompiler(SeriesEncoder())
        self.buffer = Buffer(self.db, self.metrics, next_frame_id=state.next_frame_id,
                             frames=state.buffer_frames, size=state.buffer_bytes,
                             max_bytes=self.config.max_buffer_bytes,
                             full_policy=self.config.full_policy, cache=self.cache,
                             decode=stored_frame_decoder(compiler, restored.births))
        self.buffer.attach(_CommitLog(self.buffer, self.committed))
        self.pipeline = Pipeline(
            buffer=self.buffer, mqtt=self.mqtt, config=self.config, limits=Limits(),
            topic_prefix="fleet", compiler=compiler, fleet=FleetState(), metrics=self.metrics,
            state=restored)
        return self.pipeline

    def buffer_for(self, endpoints: Sequence[str], cache: EntryCache | None = None) -> Buffer:
        """The buffer a forwarder of these endpoints reads: the pipeline's own, or with another
        entry cache (an empty one: every frame is read back) a view of it as it is now."""
        b = self.buffer
        if cache is None:
            b.endpoints = tuple(endpoints)
            return b
        return Buffer(self.db, self.metrics, next_frame_id=b.last_reserved + 1, frames=b.frames,
                      size=b.bytes, endpoints=endpoints, cache=cache, decode=b.decode)

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.path)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    def counter(self, name: str, *labels: str) -> float:
        value = self.metrics.registry.get_sample_value(
            name, dict(zip(("reason",), labels, strict=False)) if labels else None)
        return value or 0.0


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro_fn())  # type: ignore[arg-type]


