"""Stale markers for a boot that ended (the series FrameCompiler records as first seen in a boot,
closed by gateway.buffer.markers.write_closes), and gateway.fleet.series: the fleet as metrics.

Frames go the way the pipeline sends them: decoded from the wire, compiled to entries by a
budgeted FrameCompiler (what a receiver gets) and observed by FleetState. Entries are decoded
back with decode_write_request, so each test compares series as a receiver would see them.
"""

from __future__ import annotations

import math
import sqlite3

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from device_protocol import Birth, HistogramValue, MetricDef, MetricType, RawSample
from gateway.buffer import markers as stale_markers
from gateway.buffer import store
from gateway.buffer.db import apply_migrations
from gateway.buffer.markers import STALE_LOOKBACK_MS
from gateway.fleet.series import (
    DEVICE_DUPLICATES,
    DEVICE_FRAMES,
    DEVICE_LAST_SEEN,
    DEVICE_MISSING,
    DEVICE_QUARANTINED,
    DEVICE_UP,
    DEVICES,
    FleetCollector,
    device_exposition,
    fleet_metric_entries,
    merge_labels,
)
from gateway.fleet.state import DeviceRecord, FleetState
from gateway.pipeline.frame_compiler import FrameCompiler
from gateway.pipeline.series_budget import SeriesBudget
from gateway.remote_write.series import SeriesEncoder
from gateway.remote_write.wire import STALE_NAN, decode_write_request, is_stale_nan
from tests.support.factories import decoded_frame, fixed_birth

T0 = 1_790_000_000_000
EXTERNAL = (("region", "eu"),)
BOUNDS = (0.5, 2.0)
METRICS = (
    MetricDef(0, "temperature_celsius", MetricType.GAUGE),
    MetricDef(1, "inferences_total", MetricType.COUNTER),
    MetricDef(2, "latency_seconds", MetricType.HISTOGRAM, BOUNDS),
)
OLD_METRICS = (MetricDef(0, "old_gauge", MetricType.GAUGE),)

SeriesKey = frozenset[tuple[str, str]]


def birth(boot: int = 1, metrics: tuple[MetricDef, ...] = METRICS) -> Birth:
    return fixed_birth(boot, T0, metrics, labels=(("site", "lab"), ("zone", "a")))


class Device:
    """One device's traffic through compiler and fleet, remembering what was written."""

    def __init__(self, budget: int = 1_000, device_id: str = "d") -> None:
        self.device_id = device_id
        self.compiler = FrameCompiler(SeriesEncoder(EXTERNAL), budget=SeriesBudget(budget))
        self.fleet = FleetState()
        self.birth = birth()
        self.written: list[bytes] = []
        self.newest: dict[int, int] = {}  # per boot, as the pipeline's ledger keeps it
        self.seq = 0
        self.fleet.observe_birth(device_id, self.birth, T0)

    def reboot(self, new_birth: Birth) -> None:
        self.birth, self.seq = new_birth, 0
        self.fleet.observe_birth(self.device_id, new_birth, T0)

    def send(self, *samples: RawSample, time_ms: int) -> None:
        raw = decoded_frame(self.birth.boot, self.seq, time_ms, samples)
        self.seq += 1
        self.written += self.compiler.entries(self.device_id, raw, self.birth,
                                              count_refused=True)
        self.fleet.observe_telemetry(self.device_id, raw, time_ms)
        boot = self.birth.boot
        self.newest[boot] = max(self.newest.get(boot, 0),
                                time_ms + max([0, *(s.dt_ms for s in samples)]))

    @property
    def record(self) -> DeviceRecord:
        return self.fleet.devices[self.device_id]

    def stale(self, now_ms: int | None = None, boot: int | None = None) -> list[bytes]:
        """Markers as the gateway commits them when a boot ends (by default the current boot,
        a minute after its newest sample): the series the compiler recorded for the boot, as
        the pipeline stores them, closed by markers.write_closes on a real SQLite schema."""
        boot = self.birth.boot if boot is None else boot
        if boot not in self.newest:
            return []
        if now_ms is None:
            now_ms = self.newest[boot] + 60_000
        conn = sqlite3.connect(":memory:")
        apply_migrations(conn)
        store.write_batch(conn, store.BatchWrite(boot_series=self.compiler.learned))
        close = stale_markers.BootClose(1, self.device_id, boot, self.newest[boot] + 1)
        ((_, entries),) = stale_markers.write_closes(conn, [close], now_ms)
        conn.close()
        return entries


def newest_written(entries: list[bytes]) -> dict[SeriesKey, int]:
    out: dict[SeriesKey, int] = {}
    for labels, samples in decode_write_request(b"".join(entries)):
        key = frozenset(labels.items())
        out[key] = max([out.get(key, 0), *(ts for _, ts in samples)])
    return out


def markers(entries: list[bytes]) -> dict[SeriesKey, int]:
    """Series -> its marker's timestamp; every entry must be one stale marker, one per series."""
    out: dict[SeriesKey, int] = {}
    for labels, samples in decode_write_request(b"".join(entries)):
        ((value, ts),) = samples
        assert is_stale_nan(value), (labels, value)
        key = frozenset(labels.items())
        assert key not in out, f"two markers for {labels}"
        out[key] = ts
    return out


def one_ms_later(written: dict[SeriesKey, int]) -> dict[SeriesKey, int]:
    """Every series' marker, 1 ms after the device's newest sample (of any series)."""
    newest = max(written.values(), default=0)
    return dict.fromkeys(written, newest + 1)


def histogram(count: float, labels: tuple[tuple[str, str], ...] = ()) -> RawSample:
    return RawSample(2, HistogramValue(count, count / 2, (1.0, count)), 0, labels)


# ------------------------------------------------------------------ stale markers


def test_one_marker_per_written_series_one_ms_after_the_devices_newest_sample() -> None:
    device = Device()
    for i in range(3):
        device.send(RawSample(0, 20.0 + i, 0, (("core", "0"),)),
                    RawSample(0, 30.0 + i, 5, (("core", "1"),)),
                    RawSample(1, float(i), -20, ()),
                    histogram(float(i + 2)),
                    time_ms=T0 + 1_000 * i)
    written = newest_written(device.written)
    assert len(written) == 2 + 1 + len(BOUNDS) + 3  # every bucket, +Inf, _sum and _count
    assert markers(device.stale()) == one_ms_later(written)


def test_markers_carry_birth_sample_device_and_external_labels() -> None:
    device = Device()
    device.send(RawSample(0, 1.0, 0, (("core", "3"), ("site", "roof"))), histogram(2.0),
                time_ms=T0)
    by_name = {dict(key)["__name__"]: dict(key) for key in markers(device.stale())}
    assert by_name["temperature_celsius"] == {
        "__name__": "temperature_celsius", "core": "3", "site": "roof",  # the sample's site
        "zone": "a", "device_id": "d", "region": "eu"}
    assert by_name["latency_seconds_count"] == {
        "__name__": "latency_seconds_count", "site": "lab", "zone": "a", "device_id": "d",
        "region": "eu"}
    buckets = [dict(key)["le"] for key in markers(device.stale())
               if dict(key)["__name__"] == "latency_seconds_bucket"]
    assert sorted(buckets) == sorted(["0.5", "2.0", "+Inf"])


def test_marker_values_are_the_exact_staleness_nan() -> None:
    device = Device()
    device.send(RawSample(0, 1.0, 0, ()), time_ms=T0)
    ((_, [(value, _)]),) = decode_write_request(b"".join(device.stale()))
    assert math.isnan(value) and is_stale_nan(value)
    assert math.copysign(1, value) == math.copysign(1, STALE_NAN)


def test_series_the_budget_refused_get_no_marker() -> None:
    device = Device(budget=2 + len(BOUNDS) + 3)  # two gauges and the histogram
    for i in range(2):
        core = [RawSample(0, 1.0, 0, (("core", str(c)),)) for c in range(4)]
        device.send(*core[:2], histogram(3.0), *core[2:], RawSample(1, 1.0, 0, ()),
                    time_ms=T0 + i)
    written = newest_written(device.written)
    assert {dict(k).get("core") for k in written
            if dict(k)["__name__"] == "temperature_celsius"} == {"0", "1"}
    assert device.compiler.budget.refused == {"d": 6}
    assert markers(device.stale()) == one_ms_later(written)


def test_a_histogram_refused_whole_gets_no_markers() -> None:
    device = Device(budget=len(BOUNDS) + 2)  # one slot short of the histogram
    device.send(histogram(3.0), RawSample(0, 1.0, 0, ()), time_ms=T0)
    names = {dict(key)["__name__"] for key in markers(device.stale())}
    assert names == {"temperature_celsius"}


def test_each_boot_closes_its_own_series() -> None:
    device = Device()
    device.reboot(birth(1, OLD_METRICS))
    device.send(RawSample(0, 1.0, 0, ()), time_ms=T0 + 10)
    device.reboot(birth(2))  # alias 0 is another metric now
    device.send(RawSample(0, 2.0, 0, ()), time_ms=T0 + 20)
    assert {dict(k)["__name__"] for k in markers(device.stale(boot=1))} == {"old_gauge"}
    assert {dict(k)["__name__"] for k in markers(device.stale(boot=2))} == {
        "temperature_celsius"}
    assert set(markers(device.stale(boot=2)).values()) == {T0 + 21}


def test_a_boot_older_than_the_lookback_gets_no_markers() -> None:
    device = Device()
    device.send(RawSample(0, 1.0, -60_000, ()), RawSample(1, 1.0, -60_001, ()),
                histogram(2.0), time_ms=T0 + 60_000)
    marker_ms = T0 + 60_001  # after the frame's own time: no sample of it is later
    names = {dict(key)["__name__"] for key in markers(device.stale(marker_ms
                                                                   + STALE_LOOKBACK_MS))}
    assert names == {"temperature_celsius", "inferences_total", "latency_seconds_bucket",
                     "latency_seconds_sum", "latency_seconds_count"}
    assert markers(device.stale(marker_ms + STALE_LOOKBACK_MS + 1)) == {}
    assert STALE_LOOKBACK_MS == 300_000  # Prometheus's default query lookback


def test_a_device_that_sent_nothing_has_no_markers() -> None:
    assert Device().stale() == []


def test_merge_labels_is_resolve_telemetrys_merge() -> None:
    base = (("site", "lab"), ("zone", "a"))
    assert merge_labels(base, ()) is base
    assert merge_labels(base, (("core", "1"), ("site", "x"))) == (
        ("core", "1"), ("site", "x"), ("zone", "a"))
    assert merge_labels((), (("b", "1"), ("a", "2"))) == (("a", "2"), ("b", "1"))


def test_every_series_of_the_boot_is_marked_not_only_those_of_its_last_frame() -> None:
    device = Device()
    device.send(RawSample(0, 1.0, 0, ()), RawSample(1, 1.0, 0, ()), histogram(1.0),
                time_ms=T0)
    device.send(RawSample(0, 2.0, 0, ()), RawSample(1, 2.0, 0, ()),
                RawSample(0, 2.0, 0, (("core", "1"),)), time_ms=T0 + 1_000)
    device.send(RawSample(0, 3.0, 0, ()), time_ms=T0 + 2_000)
    written = newest_written(device.written)
    marked = markers(device.stale())
    assert set(marked) == set(written)  # buckets, other labels, series not in the last frame
    assert all(ts > written[key] for key, ts in marked.items())


# ------------------------------------------------------------------ the fleet as metrics


def fleet_of_three() -> FleetState:
    fleet = FleetState()
    for device_id in ("a", "b", "c"):
        fleet.observe_birth(device_id, birth(), T0)
    frame = decoded_frame(1, 0, T0, [RawSample(0, 1.0, 0, ())])
    for i in range(3):
        fleet.observe_telemetry("a", frame, T0 + 1_500 + i)
    fleet.observe_duplicates([("a", 1), ("a", 0), ("b", 1)])
    fleet.observe_quarantined("b", 4)
    fleet.sweep(T0 + 2_000)  # b and c late
    fleet.observe_death("c", 1, T0 + 2_100)
    return fleet


MISSING = {"a": 0, "b": 7, "c": 2}


def test_fleet_metric_entries_mirror_the_fleet() -> None:
    fleet = fleet_of_three()
    now = T0 + 5_000
    entries = list(fleet_metric_entries(fleet, SeriesEncoder(EXTERNAL),
                                        lambda r: MISSING[r.device_id], "gw-1", now))
    series = {frozenset(labels.items()): samples
              for labels, samples in decode_write_request(b"".join(entries))}
    assert len(series) == len(entries) == 3 + 6 * 3  # one sample per series
    assert all(samples[0][1] == now for samples in series.values())
    values = {frozenset(labels): samples[0][0] for labels, samples in series.items()}

    def value(name: str, **labels: str) -> float:
        return values[frozenset({"__name__": name, "region": "eu", **labels}.items())]

    for state, count in (("online", 1), ("late", 1), ("offline", 1)):
        assert value(DEVICES, gateway="gw-1", state=state) == count
    assert [value(DEVICE_UP, device_id=d) for d in "abc"] == [1.0, 1.0, 0.0]  # late is up
    assert [value(DEVICE_LAST_SEEN, device_id=d) for d in "abc"] == [
        (T0 + 1_502) / 1000, T0 / 1000, T0 / 1000]
    assert [value(DEVICE_FRAMES, device_id=d) for d in "abc"] == [3, 0, 0]
    assert [value(DEVICE_DUPLICATES, device_id=d) for d in "abc"] == [2, 1, 0]
    assert [value(DEVICE_MISSING, device_id=d) for d in "abc"] == [0, 7, 2]
    assert [value(DEVICE_QUARANTINED, device_id=d) for d in "abc"] == [0, 4, 0]


def test_an_empty_fleet_still_reports_its_zero_counts() -> None:
    entries = list(fleet_metric_entries(FleetState(), SeriesEncoder(), lambda r: 0, "gw", T0))
    decoded = decode_write_request(b"".join(entries))
    assert sorted((labels["state"], samples) for labels, samples in decoded) == [
        ("late", [(0.0, T0)]), ("offline", [(0.0, T0)]), ("online", [(0.0, T0)])]
    assert all(set(labels) == {"__name__", "gateway", "state"} for labels, _ in decoded)


def test_the_collector_serves_the_same_families_on_metrics() -> None:
    fleet = fleet_of_three()
    registry = CollectorRegistry()
    registry.register(FleetCollector(fleet))
    text = (generate_latest(registry)
            + device_exposition(fleet, lambda r: MISSING[r.device_id])).decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    expected: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {
        (DEVICES, (("state", "online"),)): 1, (DEVICES, (("state", "late"),)): 1,
        (DEVICES, (("state", "offline"),)): 1,
    }
    for d, up, seen, frames, dups, bad in (("a", 1, T0 + 1_502, 3, 2, 0),
                                           ("b", 1, T0, 0, 1, 4), ("c", 0, T0, 0, 0, 0)):
        key = (("device_id", d),)
        expected.update({(DEVICE_UP, key): up, (DEVICE_LAST_SEEN, key): seen / 1000,
                         (DEVICE_FRAMES, key): frames, (DEVICE_DUPLICATES, key): dups,
                         (DEVICE_MISSING, key): MISSING[d], (DEVICE_QUARANTINED, key): bad})
    created = {k for k in samples if k[0].endswith("_created")}
    assert {k: v for k, v in samples.items() if k not in created} == expected
    assert "# TYPE fleet_device_frames_received_total counter" in text
    assert "# TYPE fleet_device_up gauge" in text


def test_the_collector_follows_the_fleet_between_scrapes() -> None:
    fleet = FleetState()
    registry = CollectorRegistry()
    registry.register(FleetCollector(fleet))
    assert registry.get_sample_value(DEVICES, {"state": "online"}) == 0
    fleet.observe_birth("x", birth(), T0)
    assert registry.get_sample_value(DEVICES, {"state": "online"}) == 1
    assert b'fleet_device_up{device_id="x"} 1\n' in device_exposition(fleet, lambda r: 0)
    fleet.forget("x")
    assert registry.get_sample_value(DEVICES, {"state": "online"}) == 0
    assert b'device_id="x"' not in device_exposition(fleet, lambda r: 0)
