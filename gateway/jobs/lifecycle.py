"""The lifecycle sweep: devices to late/offline; their events written, streamed and acted on.

A fleet that goes dark at once (a site loses power: 100,000 devices time out in the same
second) is worked through in slices of SWEEP_CHUNK state changes: each slice's events are
written in one transaction and streamed, then its silent boots closed (Pipeline.close_boots: a
transaction per few hundred boots, the commit lock given up in between), so the loop, the
writer and the devices still alive are never held for more than one slice, and neither the
events nor the stale markers of the whole fleet are in memory at once.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from gateway.buffer import store
from gateway.buffer.markers import STALE_LOOKBACK_MS
from gateway.errors import StoreError
from gateway.fleet.events import EventHub
from gateway.fleet.state import DeviceEvent, DeviceState, FleetState
from gateway.jobs.runner import Db
from gateway.metrics import GatewayMetrics

LIFECYCLE_TICK_S = 1.0  # late/offline found within a second; events written within one
# State changes swept, written and closed at a time (~10-20 ms of the loop per slice).
SWEEP_CHUNK = 1000

# (device_id, boot, still_closed) -> stale markers queued: Pipeline.close_boot
CloseBoot = Callable[[str, int, Callable[[], bool]], Awaitable[int]]
# [(device_id, boot, still_closed), ...] -> stale markers queued: Pipeline.close_boots
CloseBoots = Callable[[Sequence[tuple[str, int, Callable[[], bool]]]], Awaitable[int]]


@dataclass
class LifecycleJob:
    """close_boots (or, one boot at a time, close_boot) sends silent boots' stale markers;
    both None when there is no endpoint."""

    fleet: FleetState
    db: Db
    events: EventHub
    metrics: GatewayMetrics
    close_boot: CloseBoot | None
    close_boots: CloseBoots | None = None
    _resumed: bool = field(default=False, init=False)

    async def tick(self, now_ms: int) -> int:
        """Sweep for late/offline devices; write, stream and act on the events. Returns how
        many events there were."""
        if not self._resumed:
            self._resumed = True
            await self._close_interrupted(now_ms)
        total = 0
        while True:
            more = self.fleet.sweep(now_ms, limit=SWEEP_CHUNK)
            total += len(await self._write_events(close=True))
            if not more:
                return total
            await asyncio.sleep(0)  # the next slice after whatever waited for the loop

    async def write_events(self) -> list[DeviceEvent]:
        """The fleet's pending events to SQLite (SWEEP_CHUNK a transaction), then to the
        stream; on a StoreError those not written stay pending, first in line. (No boot
        closed: a stop's last write.)"""
        return await self._write_events(close=False)

    async def _write_events(self, close: bool) -> list[DeviceEvent]:
        """write_events, and with close the silent boots of each chunk's offline timeouts
        once it is written (a chunk written is never requeued: its boots are closed now)."""
        events = self.fleet.take_events()
        for start in range(0, len(events), SWEEP_CHUNK):
            chunk = events[start:start + SWEEP_CHUNK]
            rows = [(e.device_id, e.ts_ms, e.kind, e.state, e.previous, e.boot, e.previous_boot,
                     e.reason) for e in chunk]
            try:
                first_id = await self.db.write(functools.partial(store.insert_events, rows=rows))
            except StoreError:
                self.fleet.requeue_events(events[start:])  # written at the next tick, in order
                raise
            self.events.publish(e.as_dict(first_id + i) for i, e in enumerate(chunk))
            counted: dict[str, int] = {}
            for e in chunk:
                counted[e.state or e.kind] = counted.get(e.state or e.kind, 0) + 1
            for event, count in counted.items():
                self.metrics.device_events.labels(event).inc(count)
            if close:  # deaths and reboots are closed by the pipeline, in arrival order
                await self._close_silent_boots([
                    (e.device_id, e.boot) for e in chunk if e.kind == "state"
                    and e.state == "offline" and e.reason == "timeout" and e.boot is not None])
        return events

    async def _close_interrupted(self, now_ms: int) -> None:
        """At a start: the boots of devices gone offline within the lookback, in case their
        closing was cut short by a stop (a fleet gone dark takes a while to close, and the
        checkpoint may have saved them offline meanwhile). The pipeline skips the boots it
        closed already (closed_boots, in SQLite): each boot gets its markers once."""
        since = now_ms - STALE_LOOKBACK_MS
        devices = self.fleet.devices
        recent: list[tuple[str, int]] = []
        for device_id in self.fleet.by_state[DeviceState.OFFLINE]:
            record = devices[device_id]
            if record.boot is not None and record.state_since_ms >= since:
                recent.append((device_id, record.boot))
        for start in range(0, len(recent), SWEEP_CHUNK):
            await self._close_silent_boots(recent[start:start + SWEEP_CHUNK])

    async def _close_silent_boots(self, boots: list[tuple[str, int]]) -> None:
        if not boots:
            return
        if self.close_boots is not None:
            await self.close_boots([(device_id, boot, self._still_offline(device_id, boot))
                                    for device_id, boot in boots])
        elif self.close_boot is not None:
            for device_id, boot in boots:
                await self.close_boot(device_id, boot, self._still_offline(device_id, boot))

    def _still_offline(self, device_id: str, boot: int) -> Callable[[], bool]:
        def still_offline() -> bool:
            record = self.fleet.devices.get(device_id)
            return record is not None and not record.online and record.boot == boot

        return still_offline
