"""The gateway killed (SIGKILL) under load, and away while devices publish: what it acked is in
SQLite, what it had not acked the broker redelivers, and dedup makes the sum exactly once."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import tests.support.factories as f
import tests.support.publisher as publisher
from devstack import Mosquitto, Prometheus, VictoriaMetrics, wait_for
from tests.faults.conftest import FaultReport
from tests.faults.probes import FAST_RETRY, METRIC, GatewayFactory, committed_upto, out_of_order
from tests.support.publisher import PacedFleet, Publisher
from tests.support.receivers import expected_temperatures, prom_counts, vm_account

pytestmark = pytest.mark.e2e


def _kill_targets(kills: int, total: int) -> list[Callable[[int], int]]:
    """Where to kill, given committed_upto right after the latest (re)start: alternately in
    steady state (spread over the run) and just after a restart, while the frames queued during
    it are drained and forwarded in full batches."""
    targets: list[Callable[[int], int]] = []
    for k in range(kills):
        if k % 2:
            targets.append(lambda restarted_at: restarted_at + 300)
        else:
            share = (k + 1) / (kills + 1)
            targets.append(lambda restarted_at, s=share: max(restarted_at + 300, int(total * s)))
    return targets


def test_sigkill_under_load(
        mosquitto: Mosquitto, prometheus: Prometheus, victoria_metrics: VictoriaMetrics,
        gateway_factory: GatewayFactory, fault_report: FaultReport, long_run: bool) -> None:
    """Gateway killed with SIGKILL under load (3 times; 20 in the long run)."""
    max_samples = 2000
    gw = gateway_factory(mosquitto, prometheus, victoria_metrics,
                         remote_write_max_samples=str(max_samples), **FAST_RETRY)
    kills = 20 if long_run else 3
    devices, seqs = range(30), range(1500 if long_run else 300)
    total = len(devices) * (len(seqs) + 1)
    base = f.now_ms() - len(seqs) * 1000 - 30_000
    fleet = PacedFleet(mosquitto.url, devices, seqs, base, round_interval_s=0.04)
    fleet.start()
    kill_points: list[tuple[int, int]] = []  # (committed frames, published frames) at each kill
    try:
        restarted_at = 0
        for kill_target in _kill_targets(kills, total):
            target = min(kill_target(restarted_at), total)
            wait_for(lambda t=target: committed_upto(gw) >= t, 90,  # type: ignore[misc]
                     what=f"gateway to commit {target} frames")
            kill_points.append((committed_upto(gw), fleet.sent))
            gw.kill()
            gw.start()  # same workdir: same SQLite buffer, same MQTT session
            restarted_at = committed_upto(gw)
    finally:
        fleet.join(300)
    assert fleet.error is None, f"publisher failed: {fleet.error!r}"
    assert fleet.sent == total
    mid_stream = sum(1 for _, published in kill_points if published < total)
    print(f"\nkills at (committed, published) frames: {kill_points} of {total}")
    assert mid_stream >= kills * 3 // 4, "most kills must land while the fleet publishes"

    expected_counts = {f.device_id(i): len(seqs) for i in devices}
    wait_for(lambda: gw.caught_up() and prom_counts(prometheus, METRIC) == expected_counts, 120,
             what="every frame forwarded after the last restart")
    assert out_of_order(prometheus, devices, seqs, base) == []
    expected = expected_temperatures(devices, seqs)
    lost, doubled = vm_account(victoria_metrics, METRIC, expected)
    bound = kills * max_samples
    samples_in = len(devices) * len(seqs)
    print(f"VictoriaMetrics after {kills} SIGKILLs: lost {lost}, doubled {doubled} "
          f"(bound {bound})")
    note = (f"{kills} kills, {mid_stream} mid-publish; resend bound one batch per kill "
            f"({bound:,} samples)")
    fault_report.record(frames_in=total, samples_in=samples_in, samples_out=samples_in - lost,
                        lost=lost, doubled=doubled if doubled > bound else 0,
                        resent=doubled if doubled <= bound else 0, note=note)
    fault_report.record(frames_in=total, samples_in=samples_in, samples_out=samples_in,
                        lost=0, doubled=0, receiver="Prometheus",
                        note="exact count and order per device")
    assert lost == 0
    assert doubled <= bound
    assert gw.metric("fleetgate_forward_dead_letters_total") == 0


def test_frames_published_while_the_gateway_is_down_wait_in_its_broker_session(
        mosquitto: Mosquitto, victoria_metrics: VictoriaMetrics,
        gateway_factory: GatewayFactory, fault_report: FaultReport) -> None:
    """Gateway stopped while devices publish more than Mosquitto's default queue."""
    gw = gateway_factory(mosquitto, victoria_metrics)  # creates the persistent session
    gw.stop()
    devices, seqs = range(20), range(200)
    base = f.now_ms() - 300_000
    with Publisher(mosquitto.url) as pub:
        sent = pub.publish(publisher.births(devices))
        sent += pub.publish(publisher.telemetry(devices, seqs, base))
    # More than Mosquitto's default queue of 1,000: only the shipped limits keep them all.
    assert sent == 20 * 201 > 1000

    gw.start()
    wait_for(lambda: gw.metric("fleetgate_frames_stored_total") == sent and gw.caught_up(), 60,
             what="the queued frames to be stored and forwarded")
    expected = expected_temperatures(devices, seqs)
    lost, doubled = vm_account(victoria_metrics, METRIC, expected)
    fault_report.record(frames_in=sent, samples_in=4000, samples_out=4000 - lost, lost=lost,
                        doubled=doubled, note="queued in the gateway's persistent session")
    assert (lost, doubled) == (0, 0)
    assert gw.metric("fleetgate_frames_duplicate_total") == 0
