"""Shared set-up for pipeline and forwarder tests: a Pipeline on a real SQLite file."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import tests.support.factories as f
from device_protocol import Limits
from gateway.buffer import store
from gateway.buffer.db import Database
from gateway.buffer.entry_cache import EntryCache
from gateway.fleet.state import FleetState
from gateway.ingest.mqtt import InboundMessage
from gateway.metrics import GatewayMetrics
from gateway.pipeline.frame_compiler import FrameCompiler
from gateway.pipeline.stage import Pipeline, restore_state
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
        births, ledger, held = restored.births, restored.ledger, restored.held
        self.pipeline = Pipeline(
            db=self.db, mqtt=self.mqtt, config=self.config, limits=Limits(),
            topic_prefix="fleet", compiler=FrameCompiler(SeriesEncoder()), births=births,
            ledger=ledger,
            fleet=FleetState(), cache=self.cache, metrics=self.metrics,
            next_frame_id=state.next_frame_id, buffer_bytes=state.buffer_bytes,
            buffer_frames=state.buffer_frames, held=held, on_committed=self.committed.append,
            closed_boots=restored.closed_boots)
        return self.pipeline

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


