"""The command line: flags, environment defaults, errors, and a broker that is not there."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from devstack import free_port
from firmware_sim.__main__ import build_parser, config_from_args, main
from firmware_sim.config import (
    BrokerAddress,
    ConfigError,
    FleetConfig,
    parse_mqtt_url,
    read_passwords,
)
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
        (["--mqtt-url", "ws://x:8883"], "scheme must be mqtt:// or mqtts://"),
        (["--tls-ca", "ca.crt"], "need an mqtts:// URL"),
        (["--mqtt-url", "mqtts://x", "--tls-ca", "/nonexistent/ca.crt"], "no such file"),
        (["--mqtt-url", "mqtts://x", "--tls-cert-dir", "/nonexistent"],
         "no /nonexistent/sim-0001.crt for device sim-0001"),
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
    assert parse_mqtt_url("mqtts://broker.lan") == BrokerAddress("broker.lan", 8883, tls=True)
    with pytest.raises(ConfigError, match="no host"):
        parse_mqtt_url("mqtt://:1883")


def test_tls_flags_reach_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEETGATE_MQTT_URL", raising=False)
    args = build_parser().parse_args(["--mqtt-url", "mqtts://127.0.0.1:8883", "--tls-ca", "ca",
                                      "--tls-cert-dir", "certs", "--password-file", "pw"])
    config = config_from_args(args)
    assert (config.tls_ca_file, config.tls_cert_dir, config.password_file) == ("ca", "certs",
                                                                               "pw")


def test_password_file_names_every_device_and_no_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    passwords = tmp_path / "passwords"
    passwords.write_text("# device:password\nsim-0001:s3cret-one\n\nsim-0002:s3cret:two\n")
    assert read_passwords(str(passwords)) == {"sim-0001": "s3cret-one", "sim-0002": "s3cret:two"}
    with pytest.raises(SystemExit):
        main(["--devices", "3", "--password-file", str(passwords)])
    err = capsys.readouterr().err
    assert "no password for 1 devices, e.g. sim-0003" in err
    passwords.write_text("sim-0001 s3cret-one\n")
    with pytest.raises(ConfigError, match="line 1: expected <device_id>:<password>") as exc:
        read_passwords(str(passwords))
    assert "s3cret" not in str(exc.value)


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
