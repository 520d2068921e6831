"""The maintenance: past boots' dedup state and old device events pruned, once an hour."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.buffer import store
from gateway.jobs.runner import Db, Job
from gateway.metrics import GatewayMetrics
from gateway.pipeline.dedup import LedgerKey

log = logging.getLogger(__name__)

MAINTENANCE_INTERVAL_S = 3600.0  # pruning past boots' dedup state is slow-moving work
DAY_MS = 86_400_000


class ForgetsKeys(Protocol):
    """The dedup ledger (gateway.pipeline.dedup.Ledger)."""

    def forget(self, key: LedgerKey) -> None: ...


class ForgetsBoots(Protocol):
    """The births and the frame compiler's per-boot state (BirthRegistry, FrameCompiler)."""

    def forget(self, device_id: str, boot: int) -> None: ...


class HeldAndClosed(Protocol):
    """The pipeline's memory of closed boots and held frames (gateway.pipeline.stage.Pipeline)."""

    def forget_closed(self, keys: Sequence[LedgerKey]) -> None: ...

    def drop_held_before(self, before_ms: int) -> int: ...


@dataclass
class PruneDedupStateJob:
    """Forget past boots' ledgers and births, and held frames whose birth never came."""

    db: Db
    checkpoint: Job
    ledger: ForgetsKeys
    births: ForgetsBoots
    compiler: ForgetsBoots
    pipeline: HeldAndClosed
    metrics: GatewayMetrics
    retention_days: float

    async def tick(self, now_ms: int) -> None:
        before_ms = now_ms - int(self.retention_days * DAY_MS)
        # devices.boot must be current: the current boot is kept
        await self.checkpoint.tick(now_ms)
        ledger_keys, birth_keys, held = await self.db.write(
            lambda conn: store.prune_dedup_state(conn, before_ms))
        for key in ledger_keys:
            self.ledger.forget(key)
        self.pipeline.forget_closed(ledger_keys)
        for device_id, boot in birth_keys:
            self.births.forget(device_id, boot)
            self.compiler.forget(device_id, boot)
        if held:
            dropped = self.pipeline.drop_held_before(before_ms)
            self.metrics.frames_dropped.labels("held_without_birth").inc(dropped)
            log.warning("dropped %d held frames whose birth never came within %.0f days",
                        dropped, self.retention_days)
        if ledger_keys or birth_keys:
            log.info("forgot dedup state of %d past boots and %d births", len(ledger_keys),
                     len(birth_keys))


@dataclass
class PruneEventsJob:
    """Delete device events older than the retention. Returns how many went."""

    db: Db
    retention_days: float

    async def tick(self, now_ms: int) -> int:
        before_ms = now_ms - int(self.retention_days * DAY_MS)
        return await self.db.write(lambda conn: store.prune_events(conn, before_ms))
