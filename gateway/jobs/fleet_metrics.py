"""The fleet as metrics (device counts, per-device up/last-seen/missing...), written through
the buffer so they reach every endpoint through outages like device frames do."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from gateway.fleet.series import fleet_metric_entries
from gateway.fleet.state import DeviceRecord, FleetState
from gateway.remote_write.series import SeriesEncoder

ENTRIES_PER_FRAME = 2000  # gateway-made entries (stale markers, fleet metrics) per buffer frame

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

    async def tick(self, now_ms: int) -> int:
        """The fleet as metrics, through the buffer to every endpoint. Returns the entries."""
        chunk: list[bytes] = []
        written = 0
        for entry in fleet_metric_entries(self.fleet, self.encoder, self.missing_of,
                                          self.gateway_id, now_ms):
            chunk.append(entry)
            if len(chunk) >= ENTRIES_PER_FRAME:
                await self.commit_entries("", chunk)
                written += len(chunk)
                chunk = []
        if chunk:
            await self.commit_entries("", chunk)
            written += len(chunk)
        return written
