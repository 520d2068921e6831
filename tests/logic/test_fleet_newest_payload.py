"""The fleet keeps a device's newest frame as its bytes (issue 15: ~250 bytes instead of ~2 KB
of decoded rows a device) and reads the same values back from them, on the gateway's clock."""

from __future__ import annotations

from device_protocol import (
    Birth,
    MetricDef,
    MetricType,
    RawSample,
    RawTelemetry,
    TelemetryRows,
    decode_telemetry_rows,
    encode_telemetry,
)
from gateway.fleet.state import FleetState

T = 1_790_000_000_000
BIRTH = Birth(3, T, "esp32", "1.0", (), 10_000,
              (MetricDef(0, "temp_c", MetricType.GAUGE), MetricDef(1, "ram", MetricType.GAUGE)))


def test_the_newest_frame_kept_as_bytes_reads_back_as_its_values() -> None:
    payload = encode_telemetry(RawTelemetry(3, 5, T + 9_000, (
        RawSample(0, 21.5, 0, ()), RawSample(1, 512.0, 250, (("bank", "a"),))), False))
    rows = decode_telemetry_rows(payload)
    shifted = TelemetryRows(rows.boot, rows.seq, rows.time_ms - 4_000, rows.rows, False)
    by_rows, by_bytes = FleetState(), FleetState()
    for fleet in (by_rows, by_bytes):
        fleet.observe_birth("d", BIRTH, T)
    by_rows.observe_telemetry("d", shifted, T + 1)
    by_bytes.observe_telemetry("d", shifted, T + 1, payload)
    assert isinstance(by_bytes.devices["d"].newest, tuple)  # bytes, not rows
    expected = {"temp_c": (21.5, T + 5_000), 'ram{bank="a"}': (512.0, T + 5_250)}
    assert by_rows.devices["d"].latest() == expected
    assert by_bytes.devices["d"].latest() == expected
