"""The command line: flags, environment defaults, errors, and a broker that is not there."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from devstack import free_port
from firmware_sim.__main__ import build_parser, config_from_args, main
from firmware_sim.config import BrokerAddress, ConfigError, FleetConfig, parse_mqtt_url
from firmware_sim.fleet import Fleet


def test_environment_supplies_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETGATE_MQTT_URL", "mqtt://broker.local:1884")
    monkeypatch.setenv("FLEETGATE_TOPIC_PREFIX", "plant7")
    monkeypatch.setenv("FLEETGATE_GATEWAY_ID", "gw-east")
    config = config_from_args(build_parser().parse_args([]))
    assert (config.mqtt_url, config.topic_prefix, config.gateway_id) == (
        "mqtt://broker.local:1884",
        "plant7",
        "gw-east",
    )
    assert (config.devices, config.interval_s, config.duration_s, config.frames) == (
        20,
        5.0,
        None,
        None,
    )
    assert [p.name for p in config.profiles] == ["liquid-edge", "audio-nets", "tiny-llm",
                                                 "edge-tpu", "photon"]


def test_flags_reach_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEETGATE_MQTT_URL", raising=False)
    args = build_parser().parse_args(
        "--devices 7 --profiles tiny-llm --interval 0.5 --duration 3 --seed 11 "
        "--device-prefix edge --frames 4 --samples-per-frame 20 --ring-size 50".split()
    )
    config = config_from_args(args)
    assert config.mqtt_url == "mqtt://127.0.0.1:1883"
    assert [p.name for p in config.profiles] == ["tiny-llm"]
    assert (config.devices, config.interval_s, config.duration_s, config.seed) == (7, 0.5, 3.0, 11)
    assert (config.device_prefix, config.frames, config.samples_per_frame) == ("edge", 4, 20)
    assert config.ring_size == 50


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["--profiles", "liquid-edge,nope"], "known profiles: audio-nets"),
        (["--mqtt-url", "mqtts://x:8883"], "scheme must be mqtt://"),
        (["--devices", "0"], "--devices must be positive"),
        (["--interval", "0"], "--interval must be positive"),
        (["--device-prefix", "a/b"], "invalid device id"),
    ],
)
def test_bad_settings_exit_2_with_a_reason(
    argv: list[str], reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert reason in capsys.readouterr().err


def test_parse_mqtt_url() -> None:
    assert parse_mqtt_url("mqtt://u:p@10.0.0.2:1999") == BrokerAddress("10.0.0.2", 1999, "u", "p")
    assert parse_mqtt_url("tcp://localhost") == BrokerAddress("localhost", 1883)
    with pytest.raises(ConfigError, match="no host"):
        parse_mqtt_url("mqtt://:1883")


def test_unreachable_broker_exits_cleanly(tmp_path: Path) -> None:
    handler = signal.getsignal(signal.SIGTERM)
    summary_path = tmp_path / "summary.json"
    url = f"mqtt://127.0.0.1:{free_port()}"
    argv = ["--mqtt-url", url, "--devices", "2", "--duration", "0.2", "--quiet", "--seed", "5"]
    assert main([*argv, "--summary-json", str(summary_path)]) == 0
    summary = json.loads(summary_path.read_text())
    assert (summary["devices"], summary["connected"], summary["published"]) == (2, 0, 0)
    assert summary["seed"] == 5
    assert signal.getsignal(signal.SIGTERM) is handler  # main() restores what it replaced


def test_devices_that_never_connect_buffer_their_frames() -> None:
    config = FleetConfig(
        mqtt_url=f"mqtt://127.0.0.1:{free_port()}",
        devices=2,
        interval_s=0.02,
        duration_s=0.4,
        ring_size=5,
        connect_grace_s=0.0,
    )
    summary = Fleet(config).run()
    for device in summary.devices:
        assert device.published == 0
        assert device.buffered >= 8  # ~20 frames in 0.4 s
        assert device.unsent == 5  # the ring is full ...
        assert device.dropped == device.buffered - 5  # ... and the rest was pushed out
