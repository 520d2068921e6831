"""Remote-write entries the gateway makes about the fleet (pure; sent through the buffer).

(Stale markers for a boot that ended are made by the pipeline from the series the boot wrote:
see `gateway.buffer.markers.write_closes`.)
- The fleet mirrored as metrics, every `fleet_metrics_interval_s`: `fleet_device_up`,
  `fleet_device_last_seen_timestamp_seconds`, per-device frame counters and `fleet_devices`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric

from device_protocol import Labels
from gateway.fleet.state import DeviceRecord, FleetState
from gateway.remote_write.series import SeriesEncoder

# name, help, type; the same families are served on /metrics (gateway/metrics.py)
DEVICE_UP = "fleet_device_up"
DEVICE_LAST_SEEN = "fleet_device_last_seen_timestamp_seconds"
DEVICE_FRAMES = "fleet_device_frames_received_total"
DEVICE_DUPLICATES = "fleet_device_frames_duplicate_total"
DEVICE_MISSING = "fleet_device_frames_missing"
DEVICE_QUARANTINED = "fleet_device_frames_quarantined_total"
DEVICES = "fleet_devices"


def merge_labels(base: Labels, own: Labels) -> Labels:
    """A sample's labels as device_protocol.resolve_telemetry makes them."""
    if not own:
        return base
    combined = dict(base)
    combined.update(own)
    return tuple(sorted(combined.items()))


def fleet_metric_entries(fleet: FleetState, encoder: SeriesEncoder,
                         missing_of: Callable[[DeviceRecord], int], gateway_id: str,
                         now_ms: int) -> Iterator[bytes]:
    entry = encoder.entry
    prefix = encoder.uncached_prefix
    for state, count in fleet.counts().items():
        labels = (("gateway", gateway_id), ("state", state))
        yield entry(encoder.gateway_series_prefix(DEVICES, labels), count, now_ms)
    families = _device_families(missing_of)
    for device_id, record in list(fleet.devices.items()):
        for name, _, _, value in families:
            yield entry(prefix(device_id, name, ()), float(value(record)), now_ms)


class FleetCollector:
    """`fleet_devices{state}` on the gateway's /metrics, computed when scraped. The per-device
    families are rendered by `device_exposition` (prometheus-client's generic path takes ~4 s
    for 100,000 devices; a direct rendering, 0.25 s)."""

    def __init__(self, fleet: FleetState) -> None:
        self._fleet = fleet

    def collect(self) -> Iterator[Metric]:
        devices = GaugeMetricFamily(DEVICES, "Devices known to the gateway, by state",
                                    labels=["state"])
        for state, count in self._fleet.counts().items():
            devices.add_metric([state], count)
        yield devices


def device_exposition(fleet: FleetState, missing_of: Callable[[DeviceRecord], int]) -> bytes:
    """The per-device families in the Prometheus text format (device ids need no escaping:
    the protocol allows only [A-Za-z0-9_.-] in them)."""
    records = list(fleet.devices.values())  # one atomic copy: safe from another thread
    out: list[str] = []
    for name, kind, help_text, value in _device_families(missing_of):
        out.append(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n")
        out += [f'{name}{{device_id="{r.device_id}"}} {value(r)}\n' for r in records]
    return "".join(out).encode()


def _device_families(missing_of: Callable[[DeviceRecord], int]
                     ) -> tuple[tuple[str, str, str, Callable[[DeviceRecord], float]], ...]:
    """(name, type, help, value of a device) of each per-device family."""
    return (
        (DEVICE_UP, "gauge", "1 unless the device is offline", lambda r: int(r.online)),
        (DEVICE_LAST_SEEN, "gauge", "When the gateway last heard from the device",
         lambda r: r.last_seen_ms / 1000),
        (DEVICE_FRAMES, "counter", "Telemetry frames accepted from the device",
         lambda r: r.frames),
        (DEVICE_DUPLICATES, "counter", "Telemetry frames of the device dropped as duplicates",
         lambda r: sum(r.duplicates.values())),
        (DEVICE_QUARANTINED, "counter",
         "Frames of the device refused as invalid and quarantined (not received)",
         lambda r: r.quarantined),
        (DEVICE_MISSING, "gauge",
         "Seqs missing in the device's known boots (gaps; falls when a replay fills them)",
         missing_of),
    )
