"""Checkpoint rows (issue 15): `devices.latest` is msgpack bytes now (the current boot's samples
by alias, named by its birth when loaded; the series kept by name); rows of the JSON versions
before it still load, and load back into the same record once written in the new one."""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3

from device_protocol import HistogramValue, MetricDef, MetricType, RawSample
from gateway.buffer import store
from gateway.buffer.db import apply_migrations
from gateway.fleet.state import FleetState
from gateway.jobs.checkpoint import CheckpointJob
from gateway.jobs.gauges import GaugesJob
from gateway.metrics import GatewayMetrics
from tests.support.factories import decoded_frame, fixed_birth
from tests.support.fakes import MemoryStore

T0 = 1_790_000_000_000
METRICS = (MetricDef(0, "temp_c", MetricType.GAUGE),
           MetricDef(1, "latency_seconds", MetricType.HISTOGRAM, (0.1, 1.0)))


def through_sqlite(rows: list[tuple[object, ...]]) -> list[sqlite3.Row]:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    apply_migrations(conn)
    store.checkpoint_devices(conn, rows)
    devices = store.load_state(conn).devices
    conn.close()
    return devices


def test_a_row_keeps_aliases_and_is_named_by_the_boots_birth_when_loaded() -> None:
    fleet = FleetState()
    birth = fixed_birth(5, T0, METRICS)
    fleet.observe_birth("d", birth, T0)
    fleet.observe_telemetry("d", decoded_frame(5, 0, T0, [
        RawSample(0, 21.5, 0, (("core", "1"),)),
        RawSample(1, HistogramValue(4.0, 0.75, (1.0, 3.0)), 2, ()),
        RawSample("undeclared_rpm", 1e300, 0, ())]), T0 + 1)
    row = fleet.devices["d"].row()
    assert isinstance(row[10], bytes)  # not JSON text: no names resolved, no JSON encoded
    loaded = FleetState()
    loaded.load(through_sqlite([row]), lambda device_id, boot: birth)
    assert loaded.devices["d"].latest() == {
        'temp_c{core="1"}': (21.5, T0), "latency_seconds_count": (4.0, T0 + 2),
        "latency_seconds_sum": (0.75, T0 + 2), "undeclared_rpm": (1e300, T0)}
    assert loaded.devices["d"].row() == row


def test_a_row_of_the_json_format_before_loads_and_is_written_back_in_msgpack() -> None:
    latest = json.dumps([["temp_c", [["core", "1"]], 21.5, T0],
                         ["latency_seconds", [], [4.0, 0.75], T0 + 2],
                         ["undeclared_rpm", [], "inf", T0]])
    row = ("d", "esp32", "1.0", 5, 1000, '{"site": "x"}', T0 - 5, T0, 3, 1, latest, "online",
           T0 - 5, json.dumps({"frames": 4, "quarantined": 1, "duplicates": {"5": 2},
                               "boots": [5]}))
    fleet = FleetState()
    fleet.load(through_sqlite([row]))
    record = fleet.devices["d"]
    expected = {'temp_c{core="1"}': (21.5, T0), "latency_seconds_count": (4.0, T0 + 2),
                "latency_seconds_sum": (0.75, T0 + 2), "undeclared_rpm": (math.inf, T0)}
    assert record.latest() == expected
    assert (record.frames, record.quarantined, record.duplicates) == (4, 1, {5: 2})
    again = FleetState()
    again.load(through_sqlite([record.row()]))
    assert again.devices["d"].latest() == expected


# ---------------------------------------------------------------------- what a checkpoint writes
def checkpointed(db: MemoryStore) -> dict[str, tuple[object, ...]]:
    return {str(row[0]): row[1:] for row in db.rows(
        "SELECT device_id, state, last_seq FROM devices")}


def reporting_fleet() -> FleetState:
    fleet = FleetState(started_ms=T0)
    for device_id in ("quiet", "busy", "dead", "dup"):
        fleet.observe_birth(device_id, fixed_birth(5, T0, METRICS), T0)
    return fleet


def test_the_state_checkpoint_leaves_the_telemetrys_progress_for_the_values_one() -> None:
    fleet, db = reporting_fleet(), MemoryStore()
    job = CheckpointJob(fleet, db, GaugesJob(fleet, (), db, lambda: 0, GatewayMetrics()))
    asyncio.run(job.write(values=False))  # new devices: written whole
    assert set(checkpointed(db)) == {"quiet", "busy", "dead", "dup"}
    frame = decoded_frame(5, 7, T0 + 10, [RawSample(0, 1.5, 0, ())])
    for device_id in ("busy", "dead", "dup"):
        fleet.observe_telemetry(device_id, frame, T0 + 10)
    fleet.observe_death("dead", 5, T0 + 20)
    fleet.observe_duplicates([("dup", 5)])
    db.conn.execute("DELETE FROM devices")
    asyncio.run(job.write(values=False))
    # Their state or counters changed: written, with their newest values.
    assert checkpointed(db) == {"dead": ("offline", 7), "dup": ("online", 7)}
    asyncio.run(job.write(values=True))
    assert checkpointed(db)["busy"] == ("online", 7)  # only its telemetry moved on
    assert set(checkpointed(db)) == {"busy", "dead", "dup"}  # the others were written already
    fleet.observe_telemetry("quiet", frame, T0 + 30)
    asyncio.run(job.tick(T0 + 40))  # a stop's last checkpoint: everything
    assert checkpointed(db)["quiet"] == ("online", 7)
