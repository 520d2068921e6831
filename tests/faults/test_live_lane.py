"""The live lane (remote_write_live_first) under the faults it must survive: new frames go
ahead of a draining backlog while the gateway is killed mid-drain; still every sample once."""

from __future__ import annotations

import pytest

import tests.support.factories as f
import tests.support.publisher as publisher
from devstack import Mosquitto, VictoriaMetrics, wait_for
from tests.faults.conftest import FaultReport
from tests.faults.probes import FAST_RETRY, METRIC, GatewayFactory, buffer_frames
from tests.support.publisher import PacedFleet, Publisher
from tests.support.receivers import expected_temperatures, vm_account

pytestmark = pytest.mark.e2e


def test_live_lane_during_a_drain_with_kills(
        mosquitto: Mosquitto, victoria_metrics: VictoriaMetrics,
        gateway_factory: GatewayFactory, fault_report: FaultReport) -> None:
    """Live frames sent ahead of a draining backlog (remote_write_live_first), killed mid-drain."""
    max_samples = 2000
    gw = gateway_factory(mosquitto, victoria_metrics, remote_write_live_first="true",
                         remote_write_max_samples=str(max_samples), **FAST_RETRY)
    backlog_devices, live_devices = range(40), range(40, 50)
    backlog_seqs, live_seqs = range(300), range(150)
    base = f.now_ms() - 600_000
    victoria_metrics.stop()
    with Publisher(mosquitto.url) as pub:
        sent = pub.publish(publisher.births(backlog_devices))
        sent += pub.publish(publisher.telemetry(backlog_devices, backlog_seqs, base))
    backlog = len(backlog_devices) * (len(backlog_seqs) + 1)
    wait_for(lambda: buffer_frames(gw) == backlog, 60, what="the backlog stored")
    # Killed while the receiver is away: after the restart the backlog is only in SQLite (a
    # backlog still in the entry cache drains from memory and opens no lane).
    gw.kill()
    gw.start()
    kills = 1

    victoria_metrics.start()
    fleet = PacedFleet(mosquitto.url, live_devices, live_seqs, base, round_interval_s=0.02,
                       client_id="live-fleet")
    fleet.start()
    lanes_seen: set[tuple[int, int]] = set()

    def lane_open() -> bool:
        for e in gw.pipeline()["endpoints"]:
            if e["live_lane"] is not None and e["live_lane"][1] > e["live_lane"][0]:
                lanes_seen.add(tuple(e["live_lane"]))
                return True
        return False

    lane_kills = 0
    try:
        for _ in range(2):  # killed while the lane is open, twice if the drain lasts that long
            wait_for(lambda: lane_open() or gw.caught_up(), 60,
                     what="live frames going ahead of the backlog")
            if not lane_open():
                break  # the backlog was out before the lane could be caught open again
            gw.kill()
            kills += 1
            lane_kills += 1
            gw.start()
    finally:
        fleet.join(120)
    assert fleet.error is None, f"publisher failed: {fleet.error!r}"
    frames_in = sent + fleet.sent
    wait_for(lambda: gw.caught_up() and buffer_frames(gw) == 0, 120,
             what="backlog and live frames all forwarded")
    assert all(e["live_lane"] is None for e in gw.pipeline()["endpoints"])

    expected = {**expected_temperatures(backlog_devices, backlog_seqs),
                **expected_temperatures(live_devices, live_seqs)}
    lost, doubled = vm_account(victoria_metrics, METRIC, expected)
    samples_in = sum(len(v) for v in expected.values())
    bound = kills * max_samples
    fault_report.record(
        frames_in=frames_in, samples_in=samples_in, samples_out=samples_in - lost, lost=lost,
        doubled=doubled if doubled > bound else 0, resent=doubled if doubled <= bound else 0,
        note=f"backlog {backlog:,} frames; live lane seen open {len(lanes_seen)} times; "
             f"killed once before the drain, {kills - 1} times with the lane open; "
             f"resend bound one batch per kill ({bound:,} samples)")
    assert lane_kills >= 1, "the gateway was never killed with its live lane open"
    assert lost == 0
    assert doubled <= bound
