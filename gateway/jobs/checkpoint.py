"""The fleet checkpoint: devices changed since the last one, written to SQLite in chunks."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass

from gateway.buffer import store
from gateway.errors import StoreError
from gateway.fleet.state import FleetState
from gateway.jobs.gauges import GAUGE_INTERVAL_S, GaugesJob
from gateway.jobs.runner import Db, Runner, wall_ms

# Fleet state is advisory: losing 30 s of "last seen" to a kill is harmless, while writing it
# encodes every active device's latest values (at 10,000 devices every 5 s: 9% of the CPU).
FLEET_CHECKPOINT_INTERVAL_S = 30.0
# Devices whose only change is their telemetry's progress (last seen, seq, frames, newest
# values: every device of a busy fleet, every time) are written this often (a kill loses at
# most that much of it; a stop writes everything); state, boots and counters every 30 s.
FLEET_VALUES_CHECKPOINT_INTERVAL_S = 300.0
CHECKPOINT_CHUNK = 250  # device rows built and written at a time (~5 ms of the loop)


@dataclass
class CheckpointJob:
    """Writes the dirty devices' rows, then updates the gauges as of `clock()` after the writes
    (a checkpoint of 100,000 devices takes seconds: the unsent ages are not that much older).
    A tick writes every change (a stop's last checkpoint, the maintenance's); the periodic
    loop (run_checkpoint_and_gauges) leaves the telemetry's progress for every few minutes."""

    fleet: FleetState
    db: Db
    gauges: GaugesJob
    clock: Callable[[], int] = wall_ms

    async def tick(self, now_ms: int) -> None:
        """The rows carry their own times; the gauges are taken at clock() after the writes."""
        await self.write(values=True)

    async def write(self, values: bool) -> None:
        """values=False: only the devices with more than their telemetry's progress to save."""
        fleet = self.fleet
        dirty = fleet.take_dirty_ids(values)
        for start in range(0, len(dirty), CHECKPOINT_CHUNK):
            rows = fleet.rows_of(dirty[start:start + CHECKPOINT_CHUNK])
            if not rows:
                continue
            try:  # one transaction a chunk: the loop runs between them
                await self.db.write(functools.partial(store.checkpoint_devices, rows=rows))
            except StoreError:
                fleet.mark_dirty(dirty[start:])  # checkpointed at the next tick
                raise
        await self.gauges.tick(self.clock())


@dataclass
class _StateCheckpoint:
    """The periodic checkpoint between two of the values: CheckpointJob.write(values=False)."""

    checkpoint: CheckpointJob

    async def tick(self, now_ms: int) -> None:
        await self.checkpoint.write(values=False)


async def run_checkpoint_and_gauges(
        runner: Runner, checkpoint: CheckpointJob, gauges: GaugesJob,
        values_interval_s: float = FLEET_VALUES_CHECKPOINT_INTERVAL_S) -> None:
    """Every GAUGE_INTERVAL_S the gauges, and every FLEET_CHECKPOINT_INTERVAL_S the checkpoint
    instead (which updates the gauges too): with the newest values every values_interval_s."""
    loop = asyncio.get_running_loop()
    checkpointed = values_at = loop.time()
    state_only = _StateCheckpoint(checkpoint)
    while True:
        await asyncio.sleep(GAUGE_INTERVAL_S)
        now = loop.time()
        if now - checkpointed >= FLEET_CHECKPOINT_INTERVAL_S:
            checkpointed = now
            if now - values_at >= values_interval_s:
                values_at = now
                await runner.survive("fleet-checkpoint", checkpoint)
            else:
                await runner.survive("fleet-checkpoint", state_only)
        else:
            await runner.survive("gauges", gauges)
