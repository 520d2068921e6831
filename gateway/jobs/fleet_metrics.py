"""The fleet as metrics (device counts, per-device up/last-seen/missing...), written through
the buffer so they reach every endpoint through outages like device frames do.

Incremental (issue 15): the first tick after a start writes every family of every device
(the receiver may have lost them to the gateway's downtime); each later tick writes
`fleet_devices`, the devices observed since the last tick (last seen and frames, plus those of
their other families whose value changed) and a keep-alive slice of the fleet written whole
(KeepAlive), so that a device whose values do not change is written once every
FLEET_METRICS_KEEPALIVE_S instead of every tick, and never goes stale at the receiver.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

from gateway.fleet.series import DeviceMetrics, KeepAlive, changed_entries, fleet_metric_entries
from gateway.fleet.state import DeviceRecord, FleetState
from gateway.remote_write.series import SeriesEncoder

ENTRIES_PER_FRAME = 2000  # gateway-made entries (stale markers, fleet metrics) per buffer frame
# Prometheus's lookback is 5 minutes: a device is written again at most this + one tick
# (fleet_metrics_interval_s, 60 s by default) after its last keep-alive: 4 minutes.
FLEET_METRICS_KEEPALIVE_S = 180.0

# (device_id, entries) -> frame id: Pipeline.commit_entries
CommitEntries = Callable[[str, Sequence[bytes]], Awaitable[int]]


@dataclass
class FleetMetricsJob:
    """commit_entries commits one frame of the buffer for every endpoint (gateway-made: device
    id ""); missing_of counts a device's missing seqs."""

    fleet: FleetState
    encoder: SeriesEncoder
    missing_of: Callable[[DeviceRecord], int]
    gateway_id: str
    commit_entries: CommitEntries
    keepalive_s: float = FLEET_METRICS_KEEPALIVE_S
    _devices: DeviceMetrics = field(init=False, repr=False)
    _keepalive: KeepAlive = field(init=False, repr=False)
    _started: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self._devices = DeviceMetrics(self.encoder, self.missing_of)
        self._keepalive = KeepAlive(int(self.keepalive_s * 1000))

    async def tick(self, now_ms: int) -> int:
        """The fleet's changes as metrics, through the buffer to every endpoint. Returns the
        entries written."""
        fleet = self.fleet
        if not self._started:
            self._started = True
            fleet.take_metrics_dirty()  # all of them now
            self._keepalive.due((), now_ms)  # the keep-alive clock starts
            return await self._write(fleet_metric_entries(
                fleet, self.encoder, self.missing_of, self.gateway_id, now_ms))
        keepalive = self._keepalive.due(fleet.sorted_ids(), now_ms)
        return await self._write(changed_entries(
            fleet, self._devices, self.encoder, self.gateway_id, now_ms,
            fleet.take_metrics_dirty(), keepalive))

    async def _write(self, entries: Iterable[bytes]) -> int:
        """In frames of ENTRIES_PER_FRAME: the loop runs between them."""
        chunk: list[bytes] = []
        written = 0
        for entry in entries:
            chunk.append(entry)
            if len(chunk) >= ENTRIES_PER_FRAME:
                await self.commit_entries("", chunk)
                written += len(chunk)
                chunk = []
        if chunk:
            await self.commit_entries("", chunk)
            written += len(chunk)
        return written
