"""The SQLite file damaged while the gateway is stopped: it starts anyway, sets the damaged file
aside, salvages what is readable, says what is lost, and carries on.

The receiver is down while the first frames are committed, so they are all still in the buffer
when the file is damaged; after the restart every salvaged frame must reach VictoriaMetrics
exactly once, the new frames too, and what is missing must be exactly what the gateway reported.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

import tests.support.factories as f
import tests.support.publisher as publisher
from devstack import Mosquitto, VictoriaMetrics, wait_for
from tests.faults.conftest import FaultReport
from tests.faults.probes import FAST_RETRY, METRIC, GatewayFactory, committed_upto, readyz
from tests.support.publisher import Publisher
from tests.support.receivers import expected_temperatures, vm_account, vm_samples

pytestmark = pytest.mark.e2e

DEVICES = range(20)
BEFORE, AFTER = range(100), range(100, 150)  # seqs published before and after the damage
PAGE = 4096  # SQLite's default page size, which the gateway keeps


def truncate_to_half(db: Path) -> None:
    data = db.read_bytes()
    db.write_bytes(data[:len(data) // 2 // PAGE * PAGE])


def overwrite_middle_frame_pages(db: Path) -> None:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    leaves = [p for (p,) in conn.execute(
        "SELECT pageno FROM dbstat WHERE name = 'frames' AND pagetype = 'leaf' ORDER BY path")]
    conn.close()
    middle = len(leaves) // 2
    rng = random.Random(11)
    with db.open("r+b") as file:
        for page in leaves[middle:middle + 3]:
            file.seek((page - 1) * PAGE)
            file.write(rng.randbytes(PAGE))


def run_scenario(mosquitto: Mosquitto, victoria_metrics: VictoriaMetrics,
                 gateway_factory: GatewayFactory, fault_report: FaultReport,
                 damage: Callable[[Path], None], what: str) -> None:
    victoria_metrics.stop()  # everything stays in the buffer
    gw = gateway_factory(mosquitto, victoria_metrics, shutdown_forward_deadline_s="0",
                         **FAST_RETRY)
    base = f.now_ms() - 300_000
    first = len(DEVICES) * (len(BEFORE) + 1)  # births + telemetry: frame ids 1..first
    with Publisher(mosquitto.url) as pub:
        pub.publish(publisher.births(DEVICES))
        pub.publish(publisher.telemetry(DEVICES, BEFORE, base))
    wait_for(lambda: committed_upto(gw) == first, 30, what="the first frames committed")
    gw.stop()

    db = gw.data_dir / "fleetgate.db"
    damage(db)
    damaged = db.read_bytes()
    victoria_metrics.start()
    gw.start()  # ready (200 on /readyz) only if it started on the salvaged database

    recovery = gw.pipeline()["last_recovery"]
    assert recovery is not None and recovery["salvage_error"] == ""
    lost = recovery["lost_frames"]
    assert 0 < lost < first and recovery["frame_ids"] == [0, first]
    copy = Path(recovery["quarantined_to"]) / "fleetgate.db"
    assert copy.read_bytes() == damaged  # the evidence, untouched
    log = gw.run_log()
    assert sum("database was damaged" in line for line in log.splitlines()) == 1
    assert recovery["quarantined_to"] in log and f"acknowledged frames lost: {lost}" in log
    assert gw.metric("fleetgate_store_recoveries_total") == 1
    assert gw.metric("fleetgate_store_unreadable_frames_total") == lost

    with Publisher(mosquitto.url) as pub:  # carries on: new frames after the salvaged ones
        pub.publish(publisher.telemetry(DEVICES, AFTER, base))
    total = first + len(DEVICES) * len(AFTER)
    wait_for(lambda: committed_upto(gw) == total and gw.caught_up(), 30,
             what="the new frames committed and everything forwarded")
    assert readyz(gw) == 200

    expected = expected_temperatures(DEVICES, range(len(BEFORE) + len(AFTER)))
    samples_in = sum(len(v) for v in expected.values())
    missing_births = len(DEVICES) - len(vm_samples(victoria_metrics, "fleet_device_info"))
    # every frame is there once, except exactly the frames the gateway reported lost
    missing, doubled = vm_account(victoria_metrics, METRIC, expected, within_s=5)
    missing_after = vm_account(victoria_metrics, METRIC,
                               expected_temperatures(DEVICES, AFTER), within_s=0)[0]
    assert missing_after == 0  # nothing published after the restart is lost
    assert doubled == 0
    assert missing + missing_births == lost
    fault_report.record(
        frames_in=total, samples_in=samples_in, samples_out=samples_in - missing, lost=missing,
        doubled=doubled,
        note=f"{what} while stopped: {lost} of {first} buffered frames were in unreadable pages "
             f"and reported lost by the gateway ({missing_births} of them births); every other "
             f"frame and all {len(DEVICES) * len(AFTER)} published after the restart arrived "
             f"once")


def test_database_truncated_while_stopped(
        mosquitto: Mosquitto, victoria_metrics: VictoriaMetrics,
        gateway_factory: GatewayFactory, fault_report: FaultReport) -> None:
    """SQLite file truncated to half while the gateway is stopped."""
    run_scenario(mosquitto, victoria_metrics, gateway_factory, fault_report, truncate_to_half,
                 "file cut to half")


def test_database_pages_overwritten_while_stopped(
        mosquitto: Mosquitto, victoria_metrics: VictoriaMetrics,
        gateway_factory: GatewayFactory, fault_report: FaultReport) -> None:
    """SQLite file with pages in the middle overwritten while the gateway is stopped."""
    run_scenario(mosquitto, victoria_metrics, gateway_factory, fault_report,
                 overwrite_middle_frame_pages, "3 frame pages overwritten")
