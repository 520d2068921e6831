"""The lifecycle sweep: devices to late/offline; their events written, streamed and acted on."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway.buffer import store
from gateway.errors import StoreError
from gateway.fleet.events import EventHub
from gateway.fleet.state import DeviceEvent, FleetState
from gateway.jobs.runner import Db
from gateway.metrics import GatewayMetrics

LIFECYCLE_TICK_S = 1.0  # late/offline found within a second; events written within one

# (device_id, boot, still_closed) -> stale markers queued: Pipeline.close_boot
CloseBoot = Callable[[str, int, Callable[[], bool]], Awaitable[int]]


@dataclass
class LifecycleJob:
    """close_boot sends a silent boot's stale markers; None when there is no endpoint."""

    fleet: FleetState
    db: Db
    events: EventHub
    metrics: GatewayMetrics
    close_boot: CloseBoot | None

    async def tick(self, now_ms: int) -> int:
        """Sweep for late/offline devices; write, stream and act on the events. Returns how
        many events there were."""
        self.fleet.sweep(now_ms)
        events = await self.write_events()
        for event in events:
            # Deaths and reboots are closed by the pipeline, in arrival order; a timeout here.
            if (event.kind == "state" and event.state == "offline"
                    and event.reason == "timeout" and event.boot is not None):
                await self._close_silent_boot(event.device_id, event.boot)
        return len(events)

    async def write_events(self) -> list[DeviceEvent]:
        """The fleet's pending events to SQLite, then to the stream; on a StoreError they stay
        pending, first in line."""
        events = self.fleet.take_events()
        if not events:
            return events
        rows = [(e.device_id, e.ts_ms, e.kind, e.state, e.previous, e.boot, e.previous_boot,
                 e.reason) for e in events]
        try:
            first_id = await self.db.write(lambda conn: store.insert_events(conn, rows))
        except StoreError:
            self.fleet.requeue_events(events)  # written at the next tick, in order
            raise
        self.events.publish(e.as_dict(first_id + i) for i, e in enumerate(events))
        for e in events:
            self.metrics.device_events.labels(e.state or e.kind).inc()
        return events

    async def _close_silent_boot(self, device_id: str, boot: int) -> None:
        def still_offline() -> bool:
            record = self.fleet.devices.get(device_id)
            return record is not None and not record.online and record.boot == boot

        if self.close_boot is not None:
            await self.close_boot(device_id, boot, still_offline)
