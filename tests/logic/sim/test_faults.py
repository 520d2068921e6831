"""Fault switches: parsing `--fault`, choosing devices, and what a faulty device puts out."""

from __future__ import annotations

import random

import pytest

from device_protocol import ProtocolError, decode_telemetry
from firmware_sim.__main__ import main
from firmware_sim.config import ConfigError, FleetConfig
from firmware_sim.device import CARDINALITY_METRIC, SimDevice
from firmware_sim.faults import FAULT_KINDS, FaultKind, FaultSpec, FaultSpecError, parse_fault
from firmware_sim.profiles import ModelFault, get_profile

IDS = [f"sim-{i:04d}" for i in range(1, 101)]


@pytest.mark.parametrize(("text", "expected"), [
    ("overheat=sim-0003", FaultSpec(FaultKind.OVERHEAT, "sim-0003", 0.0)),
    ("flap=10%@60", FaultSpec(FaultKind.FLAP, "10%", 60.0)),
    ("clock-skew=2@-120", FaultSpec(FaultKind.CLOCK_SKEW, "2", -120.0)),
    ("duplicate=all@0.5", FaultSpec(FaultKind.DUPLICATE, "all", 0.5)),
    ("reboot=sim-0001,sim-0002", FaultSpec(FaultKind.REBOOT, "sim-0001,sim-0002", 300.0)),
])
def test_parse_fault(text: str, expected: FaultSpec) -> None:
    assert parse_fault(text) == expected


@pytest.mark.parametrize(("text", "reason"), [
    ("melt=all", "unknown fault kind"),
    ("overheat", "expected KIND=WHO"),
    ("overheat=", "expected KIND=WHO"),
    ("duplicate=all@2", "must lie in [0, 1]"),
    ("flap=all@soon", "is not a number"),
    ("flap=150%", "share must lie"),
    ("flap=sim 1", "WHO must be"),
])
def test_bad_faults_say_how_to_write_them(text: str, reason: str) -> None:
    with pytest.raises(FaultSpecError) as exc:
        parse_fault(text)
    assert reason in str(exc.value)


def test_every_kind_has_a_default_inside_its_bounds() -> None:
    assert set(FAULT_KINDS) == set(FaultKind)
    for param in FAULT_KINDS.values():
        assert param.lo <= param.default <= param.hi


def test_select_by_share_count_ids_and_all() -> None:
    share = parse_fault("flap=10%").select(IDS, seed=1)
    assert len(share) == 10 and share <= set(IDS)
    assert parse_fault("flap=10%").select(IDS, seed=1) == share  # reproducible from the seed
    assert parse_fault("flap=10%").select(IDS, seed=2) != share
    assert len(parse_fault("reboot=3").select(IDS, seed=1)) == 3
    assert parse_fault("reboot=500").select(IDS, seed=1) == set(IDS)
    assert parse_fault("overheat=sim-0001,sim-0100").select(IDS, 1) == {"sim-0001", "sim-0100"}
    assert parse_fault("malformed=all").select(IDS, seed=1) == set(IDS)
    with pytest.raises(FaultSpecError, match="no such device sim-0101"):
        parse_fault("overheat=sim-0101").select(IDS, seed=1)


def test_config_refuses_a_fault_on_a_device_the_fleet_does_not_have() -> None:
    config = FleetConfig(devices=5, faults=(parse_fault("overheat=sim-0009"),))
    with pytest.raises(ConfigError, match="no such device sim-0009"):
        config.validate()


@pytest.mark.parametrize(("argv", "reason"), [
    (["--fault", "melt=all"], "unknown fault kind"),
    (["--devices", "2", "--fault", "overheat=sim-0003"], "no such device sim-0003"),
    (["--fault-rate", "-1"], "--fault-rate must be >= 0"),
])
def test_cli_exits_2_on_a_bad_fault(argv: list[str], reason: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert reason in capsys.readouterr().err


def device(profile: str = "liquid-edge", seed: int = 1) -> SimDevice:
    return SimDevice("sim-0001", get_profile(profile), random.Random(seed), interval_ms=1000)


def test_clock_skew_shifts_every_timestamp_the_device_writes() -> None:
    skewed, honest = device(), device()
    skewed.clock_skew_ms = -120_000
    now = 1_790_000_000_000
    assert skewed.birth(now).time_ms == honest.birth(now).time_ms - 120_000
    assert skewed.next_telemetry(now).time_ms == now - 120_000
    assert honest.next_telemetry(now).time_ms == now


def test_cardinality_attack_invents_a_new_label_value_in_every_frame() -> None:
    dev = device()
    dev.cardinality_per_frame = 3
    values = []
    for i in range(4):
        frame = dev.next_telemetry(1_790_000_000_000 + i * 1000)
        invented = [s for s in frame.samples if s.metric == CARDINALITY_METRIC]
        assert len(invented) == 3
        values += [dict(s.labels)["request_id"] for s in invented]
    assert len(set(values)) == 12


def test_malformed_payloads_are_refused_by_the_decoder_and_consume_no_seq() -> None:
    dev = device()
    for _ in range(30):
        with pytest.raises(ProtocolError):
            decode_telemetry(dev.malformed_payload())
    assert dev.seq == 0


def test_a_reboot_clears_a_memory_leak_but_not_an_overheat() -> None:
    dev = device()
    dev.inject(ModelFault.MEMORY_LEAK)
    dev.inject(ModelFault.OVERHEAT)
    boot = dev.boot
    dev.reboot()
    assert dev.boot != boot and dev.seq == 0 and dev.reboots == 1
    assert dev.faults == {ModelFault.OVERHEAT}


def test_a_fault_the_profile_does_not_have_is_refused() -> None:
    for name in ("liquid-edge", "audio-nets", "tiny-llm", "edge-tpu", "photon"):
        profile = get_profile(name)
        missing = set(ModelFault) - profile.model_faults
        for fault in missing:
            with pytest.raises(ValueError, match=str(fault)):
                device(name).inject(fault)
