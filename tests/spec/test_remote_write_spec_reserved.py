"""The gateway's own per-device families are reserved (found by this suite): a device that
sends `fleet_device_up` must not write into the gateway's fleet_device_up{device_id} series (two
writers, two clocks, one series). Such a frame is refused and quarantined."""

from __future__ import annotations

from collections.abc import Callable

from devstack import GatewayProcess
from tests.spec.device_frames import DEVICE, birth_msg, tele_msg
from tests.spec.rw_receiver import RecordingReceiver
from tests.support.publisher import Publisher

GatewayStarter = Callable[..., GatewayProcess]


def test_device_metrics_never_write_into_the_gateways_own_series(
        gateway_process: GatewayStarter, device: Publisher, receiver: RecordingReceiver) -> None:
    """The gateway's own families (fleet_device_up, ..._info, ..._last_seen_timestamp_seconds,
    ..._frames_*) are reserved: a device without birth labels that sends `fleet_device_up`
    would otherwise write into the gateway's series fleet_device_up{device_id=...}."""
    gateway_process(fleet_metrics_interval_s="0.5")
    device.publish([birth_msg(labels={}), tele_msg(0, [["fleet_device_up", 5]])])
    receiver.wait_for(lambda rx: any(dict(k)["__name__"] == "fleet_device_up" and s.value == 1.0
                                     for k, s in rx.accepted_samples()),
                      what="the gateway's fleet_device_up")
    mixed = {s.value for k, s in receiver.accepted_samples()
             if dict(k) == {"__name__": "fleet_device_up", "device_id": DEVICE}}
    assert mixed <= {0.0, 1.0}, f"the device's samples in the gateway's series: {mixed}"
