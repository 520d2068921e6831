"""Stale markers for the series the gateway makes about a device: fleet_device_info.

A boot's info series (its platform, firmware and labels) ends with the boot: a reboot into new
firmware starts another series, and the old one "will no longer be appended to", so it MUST
get a stale marker like the device's own series (else `count by (firmware)` counts a rebooted
device twice for 5 minutes). Found by this suite, fixed in d9166c4. `fleetgate run` behind
Mosquitto, as the other staleness tests.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from devstack import GatewayProcess
from tests.spec.device_frames import DEVICE, GAUGE, birth_msg, death_msg, tele_msg
from tests.spec.rw_receiver import RecordingReceiver
from tests.spec.spec_cases import STALE_WITHIN_S
from tests.support.publisher import Publisher

GatewayStarter = Callable[..., GatewayProcess]
pytestmark = pytest.mark.e2e  # Mosquitto and a gateway process


def info_series(receiver: RecordingReceiver, firmware: str) -> list[tuple[int, bool]]:
    """(timestamp, is a stale marker) of fleet_device_info{firmware=...} of the device."""
    return [(s.timestamp_ms, s.is_stale_marker) for key, s in receiver.accepted_samples()
            if dict(key)["__name__"] == "fleet_device_info"
            and dict(key).get("device_id") == DEVICE and dict(key).get("firmware") == firmware]


def test_stale_marker_for_the_info_series_a_new_firmware_replaces(
        gateway_process: GatewayStarter, device: Publisher, receiver: RecordingReceiver) -> None:
    """A reboot into new firmware starts fleet_device_info{firmware="2.2.0"}; the series of
    firmware 2.1.0 will never be appended to again, so it gets a stale marker."""
    gateway_process()
    device.publish([birth_msg(), tele_msg(0, [[GAUGE, 1.0]])])
    receiver.wait_for(lambda rx: bool(info_series(rx, "2.1.0")), what="the first info")
    device.publish([death_msg(), birth_msg(boot=7, fw="2.2.0"),
                    tele_msg(0, [[GAUGE, 2.0]], boot=7)])
    receiver.wait_for(lambda rx: bool(info_series(rx, "2.2.0")), what="the new info")
    receiver.wait_for(lambda rx: any(stale for _, stale in info_series(rx, "2.1.0")),
                      within_s=STALE_WITHIN_S, what="a stale marker for the old firmware's info")


def test_stale_marker_for_the_info_series_on_death(
        gateway_process: GatewayStarter, device: Publisher, receiver: RecordingReceiver) -> None:
    """After a death, fleet_device_info of the dead boot does not keep showing for 5 minutes:
    it is closed with the device's own series."""
    gateway_process()
    device.publish([birth_msg(), tele_msg(0, [[GAUGE, 1.0]])])
    receiver.wait_for(lambda rx: bool(info_series(rx, "2.1.0")), what="the info")
    device.publish([death_msg()])
    receiver.wait_for(lambda rx: any(stale for _, stale in info_series(rx, "2.1.0")),
                      within_s=STALE_WITHIN_S, what="a stale marker for the info series")
