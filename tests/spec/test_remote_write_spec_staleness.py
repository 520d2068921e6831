"""The forwarder against the remote-write 1.0 spec: stale markers, through the whole gateway.

"Senders MUST send stale markers when a time series will no longer be appended to. Stale
markers MUST be signalled by the special NaN value 0x7ff0000000000002. This value MUST NOT be
used otherwise." A device's series end when its boot ends: a death (its Will, or published
before a clean shutdown), an offline timeout, or a new boot that no longer reports them.

These run `fleetgate run` as a process (real Mosquitto, frames built by hand and published at
QoS 1, the recording receiver as the remote-write endpoint), because staleness is decided by
the gateway's lifecycle across its stages and across its restarts.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from devstack import GatewayProcess
from tests.spec.device_frames import COUNTER, GAUGE, birth_msg, death_msg, now_ms, tele_msg
from tests.spec.rw_receiver import RecordingReceiver
from tests.spec.rw_wire import STALE_NAN_BITS
from tests.spec.spec_cases import (
    STALE_WITHIN_S,
    Key,
    await_stale_markers,
    device_key,
    every_kind_of_series,
    reported,
    stale,
)
from tests.support.publisher import Publisher

GatewayStarter = Callable[..., GatewayProcess]
pytestmark = pytest.mark.e2e  # Mosquitto and a gateway process


def test_stale_marker_is_exact_nan_bits_after_the_series_last_sample(
        gateway_process: GatewayStarter, device: Publisher, receiver: RecordingReceiver) -> None:
    gateway_process()
    t = now_ms()
    device.publish([birth_msg(), tele_msg(0, [[GAUGE, 21.5], [COUNTER, 7]], t_ms=t)])
    receiver.wait_for(lambda rx: bool(reported(rx)), what="the frame forwarded")
    device.publish([death_msg()])
    receiver.wait_for(lambda rx: bool(stale(rx)), within_s=STALE_WITHIN_S,
                      what="a stale marker")
    last: dict[Key, int] = {}
    for key, s in receiver.accepted_samples():
        if math.isnan(s.value):
            assert s.bits == STALE_NAN_BITS, f"a NaN that is no stale marker: {s.bits:#x}"
        if s.is_stale_marker:
            assert s.timestamp_ms > last.get(key, -1), f"marker before a sample of {key}"
        else:
            last[key] = max(last.get(key, -1), s.timestamp_ms)


def test_stale_markers_for_every_series_of_the_boot_on_death(
        gateway_process: GatewayStarter, device: Publisher, receiver: RecordingReceiver) -> None:
    """Histogram buckets, series with other labels and undeclared gauges too, not only the
    series of the device's last frame (issue 11, finding 9)."""
    gateway_process()
    series = every_kind_of_series(device, receiver)
    device.publish([death_msg()])
    await_stale_markers(receiver, series)


def test_stale_markers_for_every_series_on_offline_timeout(
        gateway_process: GatewayStarter, device: Publisher, receiver: RecordingReceiver) -> None:
    gateway_process(device_late_after_intervals="2", device_offline_after_intervals="4")
    series = every_kind_of_series(device, receiver, interval_ms=300)
    await_stale_markers(receiver, series)


@pytest.mark.parametrize("stop", ["sigterm", "kill-9"])
def test_stale_markers_for_every_series_after_gateway_restart(
        gateway_process: GatewayStarter, device: Publisher, receiver: RecordingReceiver,
        stop: str) -> None:
    """The gateway restarts (cleanly, or killed) between the boot's frames and its death."""
    gw = gateway_process()
    series = every_kind_of_series(device, receiver)
    if stop == "sigterm":
        gw.stop()
    else:
        gw.kill()
    gw.start()
    device.publish([death_msg()])
    await_stale_markers(receiver, series)


def test_stale_markers_when_death_and_new_birth_share_a_millisecond(
        gateway_process: GatewayStarter, device: Publisher, receiver: RecordingReceiver) -> None:
    """A death and the next boot's birth arrive together (one broker read): the series the
    new boot no longer reports are still closed (issue 11, finding 5)."""
    gateway_process()
    series = every_kind_of_series(device, receiver)
    new_boot = 0x5EC00002
    device.publish([death_msg(),
                    birth_msg(boot=new_boot, metrics=[[GAUGE, "device_temperature_celsius",
                                                       "gauge"]]),
                    tele_msg(0, [[GAUGE, 23.0]], boot=new_boot)])
    receiver.wait_for(lambda rx: any(s.value == 23.0 for _, s in rx.accepted_samples()),
                      what="the new boot's frame forwarded")
    still_reported = {k for k in series if dict(k)["__name__"] == "device_temperature_celsius"
                      and "core" not in dict(k)}
    await_stale_markers(receiver, series - still_reported)


def carries(value: float) -> Callable[[RecordingReceiver], bool]:
    return lambda rx: value in {s.value for _, s in rx.accepted_samples()}


def test_a_gateway_restart_closes_no_series(
        gateway_process: GatewayStarter, device: Publisher, receiver: RecordingReceiver) -> None:
    """The staleness NaN "MUST NOT be used otherwise": a gateway stopped (SIGTERM) or killed
    and started again marks none of a live device's series stale."""
    gw = gateway_process()
    every_kind_of_series(device, receiver)
    for seq, restart in ((2, gw.stop), (3, gw.kill)):
        restart()
        gw.start()
        # A frame after the restart: whatever the gateway committed before it is sent first.
        device.publish([tele_msg(seq, [[GAUGE, 100.0 + seq]])])
        receiver.wait_for(carries(100.0 + seq), what=f"a frame after {restart.__name__}")
        assert stale(receiver) == set(), restart.__name__


def test_stale_markers_when_a_new_boot_comes_before_the_old_boots_death(
        gateway_process: GatewayStarter, device: Publisher, receiver: RecordingReceiver) -> None:
    """A power cut: the device is back with a new boot before the broker publishes the old
    connection's Will. The new birth closes the old boot's series; the late Will of the past
    boot closes nothing more (no marker after the new boot's samples of the same series)."""
    gateway_process()
    series = every_kind_of_series(device, receiver)
    new_boot = 0x5EC00003
    rebooted = now_ms() + 1_000  # a reboot takes a while: after the old boot's last sample
    device.publish([birth_msg(boot=new_boot, t_ms=rebooted),  # its clock: after the old boot
                    tele_msg(0, [[GAUGE, 24.0]], boot=new_boot, t_ms=rebooted)])
    await_stale_markers(receiver, series)
    device.publish([death_msg(), tele_msg(1, [[GAUGE, 25.0]], boot=new_boot,
                                          t_ms=rebooted + 100)])
    receiver.wait_for(carries(25.0), what="the new boot's next frame")
    gauge = device_key("device_temperature_celsius")
    stamps = [(s.timestamp_ms, s.is_stale_marker) for k, s in receiver.accepted_samples()
              if k == gauge]
    assert stamps == sorted(stamps), f"the gauge went back in time: {stamps}"
    assert not stamps[-1][1] and sum(stale for _, stale in stamps) == 1, stamps


def test_a_stale_marker_never_lands_after_the_next_boots_sample_of_its_series(
        gateway_process: GatewayStarter, device: Publisher, receiver: RecordingReceiver) -> None:
    """A reboot onto a clock set back (SNTP at boot) must not close a series at a time later
    than the new boot's next sample of it. Here the gauge was last sampled at T-30 s, another
    series at T; the new boot's clock runs ~10 s behind and reports the gauge at T-5 s. Before
    fc43833 the old boot's series were all closed at T+1 ms, so the receiver got @T-30s,
    @T+1ms stale, @T-5s: out of order, a 400 from Prometheus and the whole request (other
    devices' samples too) dead-lettered. Found by this suite."""
    gateway_process()
    t = now_ms()
    device.publish([birth_msg(t_ms=t - 60_000),  # booted a minute ago
                    tele_msg(0, [[GAUGE, 21.0, -30_000], [COUNTER, 5]], t_ms=t)])
    receiver.wait_for(lambda rx: any(s.value == 21.0 for _, s in rx.accepted_samples()),
                      what="the old boot's frame")
    new_boot = 0x5EC00004
    device.publish([birth_msg(boot=new_boot, t_ms=t - 6_000),  # its clock ~10 s behind
                    tele_msg(0, [[GAUGE, 22.0]], boot=new_boot, t_ms=t - 5_000)])
    receiver.wait_for(lambda rx: any(s.value == 22.0 for _, s in rx.accepted_samples()),
                      what="the new boot's frame")
    gauge = device_key("device_temperature_celsius")
    stamps = [(s.timestamp_ms - t, "stale" if s.is_stale_marker else s.value)
              for k, s in receiver.accepted_samples() if k == gauge]
    assert [ts for ts, _ in stamps] == sorted(ts for ts, _ in stamps), \
        f"the series went back in time at the receiver (ms from T): {stamps}"
