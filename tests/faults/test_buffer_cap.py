"""The buffer's size cap under each full-policy, with the receiver down: exact accounting.

drop_oldest: what is missing downstream is exactly what the gateway says it dropped.
block: nothing is dropped; the broker holds the rest until the buffer drains.
"""

from __future__ import annotations

from collections.abc import Callable

import tests.support.factories as f
import tests.support.publisher as publisher
from devstack import GatewayProcess, Mosquitto, VictoriaMetrics, wait_for
from tests.faults.conftest import FaultReport
from tests.faults.probes import GatewayFactory
from tests.support.publisher import Publisher
from tests.support.receivers import account, expected_temperatures, vm_samples

DEVICES, FRAMES = range(20), range(30)
SETTINGS = {"buffer_max_bytes": "6000", "remote_write_retry_max_s": "0.5"}
# For the block policy, batches well under the cap: an empty buffer takes any one batch whole
# (so that a batch larger than the cap cannot wait forever), and on a loaded machine the inbox
# can gather every frame into the first batch, which would then never meet the cap.
SMALL_BATCHES = {"commit_max_frames": "50"}


def publish_while_receiver_down(mosquitto: Mosquitto, victoria_metrics: VictoriaMetrics,
                                until: Callable[[], bool]) -> None:
    """Publish the fleet with the receiver down; bring it back once `until` holds."""
    base = f.now_ms() - 120_000
    victoria_metrics.stop()
    with Publisher(mosquitto.url) as pub:
        pub.publish(publisher.births(DEVICES))
        pub.publish(publisher.telemetry(DEVICES, FRAMES, base))
    wait_for(until, 60, what="the buffer to fill while the receiver is down")
    victoria_metrics.start()


def telemetry_in_vm(victoria_metrics: VictoriaMetrics) -> set[tuple[str, float]]:
    return {(d, v) for d, samples in vm_samples(
        victoria_metrics, "device_temperature_celsius").items() for _, v in samples}


def test_drop_oldest_drops_exactly_what_it_counts(
        mosquitto: Mosquitto, victoria_metrics: VictoriaMetrics, gateway_factory: GatewayFactory,
        fault_report: FaultReport) -> None:
    """Buffer reaching its size cap with buffer_full_policy=drop_oldest."""
    gw: GatewayProcess = gateway_factory(mosquitto, victoria_metrics,
                                         buffer_full_policy="drop_oldest", **SETTINGS)
    total = len(DEVICES) * (len(FRAMES) + 1)
    publish_while_receiver_down(
        mosquitto, victoria_metrics,
        until=lambda: gw.metric("fleetgate_frames_received_total") == total)
    wait_for(lambda: gw.metric("fleetgate_frames_stored_total") == total and gw.caught_up(), 60,
             what="what is left in the buffer to be forwarded")
    dropped = gw.metric("fleetgate_frames_dropped_total", reason="buffer_full")
    assert 0 < dropped < total

    def missing() -> int:  # telemetry and birth frames absent downstream
        births = len(vm_samples(victoria_metrics, "fleet_device_info"))
        return (len(DEVICES) * len(FRAMES) - len(telemetry_in_vm(victoria_metrics))
                + len(DEVICES) - births)

    # every frame missing downstream is one the gateway counted as dropped, no more, no less
    wait_for(lambda: missing() == dropped, 20, what=f"missing == dropped ({dropped})")
    assert gw.pipeline()["buffer"]["frames"] == 0
    samples_in = len(DEVICES) * len(FRAMES)
    samples_out = len(telemetry_in_vm(victoria_metrics))
    fault_report.record(frames_in=total, samples_in=samples_in, samples_out=samples_out,
                        lost=missing() - int(dropped), doubled=0,
                        note=f"{dropped:.0f} frames dropped by the policy, each one counted "
                             f"(fleetgate_frames_dropped_total); lost = missing - counted")


def test_block_policy_loses_nothing(
        mosquitto: Mosquitto, victoria_metrics: VictoriaMetrics, gateway_factory: GatewayFactory,
        fault_report: FaultReport) -> None:
    """Buffer reaching its size cap with buffer_full_policy=block."""
    gw: GatewayProcess = gateway_factory(mosquitto, victoria_metrics,
                                         buffer_full_policy="block", **SETTINGS,
                                         **SMALL_BATCHES)
    total = len(DEVICES) * (len(FRAMES) + 1)
    publish_while_receiver_down(  # ingest waits on the full buffer; the rest stays at the broker
        mosquitto, victoria_metrics,
        until=lambda: gw.metric("fleetgate_buffer_full_waits_total") > 0
        and gw.metric("fleetgate_frames_stored_total") < total)
    wait_for(lambda: gw.metric("fleetgate_frames_stored_total") == total and gw.caught_up(), 90,
             what="every frame to pass once the receiver is back")
    assert gw.metric("fleetgate_frames_dropped_total") == 0
    wait_for(lambda: len(telemetry_in_vm(victoria_metrics)) == len(DEVICES) * len(FRAMES), 20,
             what="every telemetry sample in VictoriaMetrics")
    expected = expected_temperatures(DEVICES, FRAMES)
    lost, doubled = account(vm_samples(victoria_metrics, "device_temperature_celsius"), expected)
    samples_in = len(DEVICES) * len(FRAMES)
    fault_report.record(frames_in=total, samples_in=samples_in, samples_out=samples_in - lost,
                        lost=lost, doubled=doubled,
                        note="ingest waited on the full buffer; the broker held the rest")
    assert (lost, doubled) == (0, 0)
