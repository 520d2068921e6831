"""SimDevice: boot and seq rules, frames the real codec accepts, ring buffer and replay."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest

from device_protocol import (
    HistogramSample,
    RawTelemetry,
    decode_birth,
    decode_death,
    decode_telemetry,
    resolve_telemetry,
)
from firmware_sim.device import SimDevice
from firmware_sim.profiles import PROFILES

T0 = 1_790_000_000_000
INTERVAL = 5000


def device(
    profile: str = "liquid-edge", seed: int = 1, *, ring_size: int = 1000, spf: int | None = None
) -> SimDevice:
    return SimDevice(
        "dev-01",
        PROFILES[profile],
        random.Random(seed),
        interval_ms=INTERVAL,
        ring_size=ring_size,
        samples_per_frame=spf,
    )


def frames(d: SimDevice, n: int, start_ms: int = T0) -> list[RawTelemetry]:
    return [d.next_telemetry(start_ms + i * INTERVAL) for i in range(n)]


def test_birth_decodes_to_the_device_identity() -> None:
    d = device("audio-nets")
    birth = decode_birth(d.birth_payload(T0))
    assert birth.boot == d.boot
    assert 0 <= d.boot < 2**32
    assert birth.time_ms == T0
    assert birth.platform in ("nrf52840", "stm32f4")
    assert birth.firmware == PROFILES["audio-nets"].firmware
    assert birth.interval_ms == INTERVAL
    assert birth.metrics == PROFILES["audio-nets"].metrics
    assert dict(birth.labels) == {"model": PROFILES["audio-nets"].model_name,
                                  "platform": birth.platform, "profile": "audio-nets"}
    assert decode_death(d.death_payload()).boot == d.boot


def test_seq_starts_at_zero_and_counts_frames() -> None:
    d = device()
    assert d.seq == 0
    payloads = [d.next_frame(T0 + i * INTERVAL) for i in range(5)]
    decoded = [decode_telemetry(p) for p in payloads]
    assert [f.seq for f in decoded] == [0, 1, 2, 3, 4]
    assert {f.boot for f in decoded} == {d.boot}
    assert [f.time_ms for f in decoded] == [T0 + i * INTERVAL for i in range(5)]
    assert not any(f.historical for f in decoded)
    assert d.seq == 5


@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("spf", [None, 1, 5, 20, 50])
def test_frames_resolve_against_the_birth(profile: str, spf: int | None) -> None:
    d = device(profile, spf=spf)
    birth = decode_birth(d.birth_payload(T0))
    expected = spf if spf is not None else PROFILES[profile].natural_samples()
    last_ts: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
    for i in range(6):
        now = T0 + (i + 1) * INTERVAL
        telemetry = resolve_telemetry(decode_telemetry(d.next_frame(now), now_ms=now), birth)
        assert len(telemetry.samples) == expected
        for s in telemetry.samples:
            # Receivers refuse a series going back in time or repeating a timestamp.
            key = (s.name, s.labels)
            assert s.timestamp_ms > last_ts.get(key, 0), key
            assert now - INTERVAL < s.timestamp_ms <= now
            last_ts[key] = s.timestamp_ms
            if isinstance(s, HistogramSample):
                assert s.buckets[-1] == (float("inf"), s.count)


def test_fewer_samples_than_metrics_rotate_through_every_series() -> None:
    d = device("liquid-edge", spf=4)
    birth = decode_birth(d.birth_payload(T0))
    seen = set()
    for f in frames(d, 4):
        seen |= {(s.name, s.labels) for s in resolve_telemetry(f, birth).samples}
    assert len(seen) == PROFILES["liquid-edge"].natural_samples()


def test_same_seed_same_frames_but_new_boot_ids() -> None:
    """The seed reproduces what a device measures; boot ids come from the system's entropy,
    so a fleet restarted with the same seed is new boots, not frames the gateway has seen."""
    def run(seed: int) -> tuple[list[int], list[RawTelemetry]]:
        d = device("tiny-llm", seed, spf=20)
        boots = [d.boot]
        out = frames(d, 10)
        d.reboot()
        boots.append(d.boot)
        out += frames(d, 1, T0 + 11 * INTERVAL)
        return boots, out

    def without_boot(fs: list[RawTelemetry]) -> list[RawTelemetry]:
        return [dataclasses.replace(f, boot=0) for f in fs]

    boots_a, frames_a = run(42)
    boots_b, frames_b = run(42)
    assert without_boot(frames_a) == without_boot(frames_b)
    assert not set(boots_a) & set(boots_b)
    assert without_boot(run(43)[1]) != without_boot(frames_a)


def test_reboot_draws_a_new_boot_restarts_seq_and_counters() -> None:
    d = device("liquid-edge")
    old_boot = d.boot
    before = frames(d, 50)
    d.reboot()
    assert d.boot != old_boot
    assert d.seq == 0
    after = d.next_telemetry(T0 + 60 * INTERVAL)
    assert after.seq == 0 and after.boot == d.boot
    counter = {s.metric: s.value for s in before[-1].samples}[0]
    restarted = {s.metric: s.value for s in after.samples}[0]
    assert isinstance(counter, float) and isinstance(restarted, float)
    assert restarted < counter  # liquid_inference_total starts over at boot


def ring(d: SimDevice, n: int, start_ms: int = T0) -> None:
    """n frames built while the device is offline: the core rings them."""
    for i in range(n):
        assert d.telemetry(start_ms + i * INTERVAL) == []


def replayed(d: SimDevice, now_ms: int) -> list[RawTelemetry]:
    """Connect, and acknowledge every replayed frame until the ring is empty."""
    out = d.core.on_connect(now_ms)
    frames: list[RawTelemetry] = []
    while out:
        p = out.pop(0)
        if p.frame is not None:
            frames.append(decode_telemetry(p.payload))
            out += d.core.on_ack(p)
    return frames


def test_reboot_loses_the_ring_and_counts_it() -> None:
    d = device()
    ring(d, 3)
    d.reboot()
    assert d.buffered == 0
    assert d.lost_on_reboot == 3
    assert replayed(d, T0) == []


def test_full_ring_drops_oldest_and_counts() -> None:
    d = device(ring_size=3)
    ring(d, 5)
    assert d.buffered == 3
    assert d.dropped == 2
    assert d.buffered_total == 5
    assert [f.seq for f in replayed(d, T0 + 9 * INTERVAL)] == [2, 3, 4]


def test_zero_ring_drops_everything() -> None:
    d = device(ring_size=0)
    ring(d, 2)
    assert (d.buffered, d.dropped) == (0, 2)


def test_replay_is_oldest_first_marked_historical_and_unchanged() -> None:
    originals = frames(device("audio-nets", seed=5), 3)
    d = device("audio-nets", seed=5)
    ring(d, 3)
    got = replayed(d, T0 + 99 * INTERVAL)
    assert [f.seq for f in got] == [0, 1, 2]
    assert all(f.historical for f in got)
    for replay, original in zip(got, originals, strict=True):
        assert replay.boot != original.boot  # boots are drawn, not seeded
        assert replay.time_ms == original.time_ms
        assert replay.samples == original.samples
    assert d.replayed_total == 3
    assert d.seq == 3  # ringing does not consume or rewind sequence numbers


def test_live_frames_continue_while_the_ring_holds_old_ones() -> None:
    d = device()
    ring(d, 2)
    d.core.max_in_flight = 1
    out = d.core.on_connect(T0 + 5 * INTERVAL)
    assert [p.frame.seq for p in out if p.frame] == [0]
    live = d.telemetry(T0 + 10 * INTERVAL)
    assert [(p.frame.seq, p.frame.historical) for p in live if p.frame] == [(2, False)]
    assert d.buffered == 1


def test_clock_skew_moves_every_timestamp_the_device_writes() -> None:
    d = device()
    d.clock_skew_ms = 600_000
    assert decode_birth(d.birth_payload(T0)).time_ms == T0 + 600_000
    assert d.next_telemetry(T0).time_ms == T0 + 600_000


@pytest.mark.parametrize(
    "kwargs",
    [
        {"interval_ms": 0},
        {"interval_ms": 1000, "ring_size": -1},
        {"interval_ms": 1000, "samples_per_frame": 0},
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SimDevice("d", PROFILES["tiny-llm"], random.Random(0), **kwargs)


def test_devices_of_a_fleet_get_distinct_boots() -> None:
    boots = {device(seed=i).boot for i in range(200)}
    assert len(boots) == 200
