"""Remote-write entries the gateway makes about the fleet (pure; sent through the buffer).

(Stale markers for a boot that ended are made by the pipeline from the series the boot wrote:
see `gateway.buffer.markers.write_closes`.)
- The fleet mirrored as metrics, every `fleet_metrics_interval_s`: `fleet_device_up`,
  `fleet_device_last_seen_timestamp_seconds`, per-device frame counters and `fleet_devices`.
  Incremental (issue 15): after the first tick, a device's families are written when they
  changed, and all of them again on a keep-alive rotation (KeepAlive) so none goes stale.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client.core import GaugeMetricFamily, Metric

from device_protocol import Labels
from gateway.fleet.state import DeviceRecord, FleetState
from gateway.remote_write.series import SeriesEncoder
from gateway.remote_write.wire import (
    SAMPLE_HEAD,
    SAMPLE_TIMESTAMP_TAG,
    SAMPLE_VALUE_TAG,
    encode_varint,
)

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
    """The whole fleet as metrics (a gateway's first tick): every family of every device."""
    yield from gateway_entries(fleet, encoder, gateway_id, now_ms)
    devices = DeviceMetrics(encoder, missing_of)
    for record in list(fleet.devices.values()):
        yield from devices.entries(record, now_ms, everything=True)


def changed_entries(fleet: FleetState, devices: DeviceMetrics, encoder: SeriesEncoder,
                    gateway_id: str, now_ms: int, changed: Iterable[str],
                    keepalive: Sequence[str]) -> Iterator[bytes]:
    """A tick of the fleet metrics after the first: every family of the devices due for their
    keep-alive (KeepAlive), and of the devices observed since the last tick the families that
    change with every frame (last seen, frames) plus those of the others whose value changed."""
    yield from gateway_entries(fleet, encoder, gateway_id, now_ms)
    records = fleet.devices
    for device_id in keepalive:
        record = records.get(device_id)
        if record is not None:
            yield from devices.entries(record, now_ms, everything=True)
    resent = set(keepalive)
    for device_id in changed:
        record = records.get(device_id)
        if record is not None and device_id not in resent:
            yield from devices.entries(record, now_ms, everything=False)


def gateway_entries(fleet: FleetState, encoder: SeriesEncoder, gateway_id: str,
                    now_ms: int) -> Iterator[bytes]:
    """`fleet_devices{gateway, state}`: every tick."""
    for state, count in fleet.counts().items():
        labels = (("gateway", gateway_id), ("state", state))
        yield encoder.entry(encoder.gateway_series_prefix(DEVICES, labels), count, now_ms)


# Rare values (up, duplicates, quarantined, missing) most devices share: one tuple for all.
_COMMON_RARE = {values: values for values in ((1.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 0.0))}


class DeviceMetrics:
    """A device's entries of the per-device families, in _device_families' order. Its rarely
    changing values are remembered in the record (`metrics_sent`, 8 bytes a device: the common
    values are one shared tuple), so a tick writes them only when they changed; last seen and
    frames change with nearly every frame and are written whenever the device was observed.
    The prefixes come from the encoder's per-name and per-device byte pieces (no per-series
    cache)."""

    def __init__(self, encoder: SeriesEncoder,
                 missing_of: Callable[[DeviceRecord], int]) -> None:
        self._prefix = encoder.uncached_prefix
        self._entry = encoder.entry
        self._missing_of = missing_of
        self._stamped_ms: int | None = None
        self._stamped: Callable[[bytes, float], bytes] = lambda prefix, value: b""

    def entries(self, record: DeviceRecord, now_ms: int, everything: bool) -> list[bytes]:
        prefix, device_id = self._prefix, record.device_id
        if now_ms != self._stamped_ms:
            self._stamp(prefix(device_id, DEVICE_UP, ()), now_ms)
        entry = self._stamped
        rare = (float(record.online), float(sum(record.duplicates.values())),
                float(record.quarantined), float(self._missing_of(record)))
        sent = None if everything else record.metrics_sent
        record.metrics_sent = _COMMON_RARE.get(rare, rare)
        out = []
        if sent is None or sent[0] != rare[0]:
            out.append(entry(prefix(device_id, DEVICE_UP, ()), rare[0]))
        out.append(entry(prefix(device_id, DEVICE_LAST_SEEN, ()), record.last_seen_ms / 1000))
        out.append(entry(prefix(device_id, DEVICE_FRAMES, ()), float(record.frames)))
        for i, name in ((1, DEVICE_DUPLICATES), (2, DEVICE_QUARANTINED), (3, DEVICE_MISSING)):
            if sent is None or sent[i] != rare[i]:
                out.append(entry(prefix(device_id, name, ()), rare[i]))
        return out

    def _stamp(self, probe: bytes, now_ms: int) -> None:
        """encoder.entry(prefix, value, now_ms) for the many entries of a tick: a Sample is the
        value's tag and 8 bytes, then the timestamp's tag and varint (remote-write protobuf), so
        the timestamp is encoded once a tick (a quarter of the entries' cost). Checked against
        encoder.entry on a real prefix; encoder.entry itself when they differ."""
        ts, pack, value_tag, ts_tag = (encode_varint(now_ms), SAMPLE_HEAD.pack,
                                       SAMPLE_VALUE_TAG, SAMPLE_TIMESTAMP_TAG)
        entry = self._entry

        def stamped(prefix: bytes, value: float) -> bytes:
            return prefix + pack(value_tag, value, ts_tag) + ts

        if stamped(probe, 0.5) != entry(probe, 0.5, now_ms):
            def stamped(prefix: bytes, value: float) -> bytes:
                return entry(prefix, value, now_ms)

        self._stamped_ms, self._stamped = now_ms, stamped


class KeepAlive:
    """Which devices to write whole again so that no series goes stale at the receiver: the
    whole fleet once every period_ms, a slice a tick in proportion to the time passed (the
    work of a tick is bounded), in id order resuming after the last id written (found by
    bisection: devices added or forgotten meanwhile do not shift the others). A device is
    written again at most period_ms + one tick interval after its last keep-alive."""

    def __init__(self, period_ms: int) -> None:
        self.period_ms = period_ms
        self._since_ms: int | None = None
        self._credit = 0.0  # devices owed, fractions carried to the next tick
        self._after: str | None = None

    def due(self, ids: Sequence[str], now_ms: int) -> list[str]:
        """The slice of ids (sorted) due as of now_ms; the first call starts the clock."""
        if self._since_ms is None:
            self._since_ms = now_ms
            return []
        credit = self._credit + len(ids) * max(0, now_ms - self._since_ms) / self.period_ms
        self._since_ms = now_ms
        count = min(len(ids), int(credit))
        self._credit = credit - count if count < len(ids) else 0.0
        if not count:
            return []
        start = 0 if self._after is None else bisect.bisect_right(ids, self._after)
        due = list(ids[start:start + count])
        if len(due) < count:
            due += ids[:count - len(due)]
        self._after = due[-1]
        return due


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
