"""Settings: defaults < TOML file < FLEETGATE_* environment < explicit overrides; bad values
raise ConfigError naming the field."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.settings import load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's or CI's own FLEETGATE_* variables must not leak into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("FLEETGATE_"):
            monkeypatch.delenv(name)


def names_field(error: ConfigError, field: str) -> bool:
    """True if the error's own words (not pydantic's echo of every input) name the field.

    pydantic appends `input_value={...}` with every input key to model-level errors, so a plain
    substring test on str(error) would pass for any field that was set at all."""
    text = re.sub(r"input_value=.*?, input_type=\w+", "", str(error))
    return field in text


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleetgate.toml"
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------- defaults
def test_defaults_are_valid_and_sliced_consistently() -> None:
    s = load_settings()
    mqtt = s.mqtt_config()
    assert (mqtt.host, mqtt.port) == ("127.0.0.1", 1883)
    assert mqtt.client_id == "fleetgate-gw1"  # stable id: the broker keeps the session
    assert mqtt.topic_prefix == "fleet" and mqtt.gateway_id == "gw1"
    assert mqtt.receive_maximum == 2000 and mqtt.max_in_hand == 20_000
    store = s.store_config()
    assert store.db_path == Path("var/fleetgate") / "fleetgate.db"
    assert store.synchronous == "full"
    assert store.full_policy == "block"
    assert store.commit_max_delay_s == pytest.approx(0.020)
    assert store.ledger_max_ranges == 4096
    forward = s.forward_config()
    assert forward.endpoints == ()
    assert forward.external_labels == ()
    assert forward.flush_deadline_s == pytest.approx(0.2)


def test_every_field_has_an_environment_name_with_the_prefix(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # docs/operations.md promises FLEETGATE_<FIELD> for every field: check a plain one of each
    # type, picked from every section.
    monkeypatch.setenv("FLEETGATE_COMMIT_MAX_FRAMES", "17")
    monkeypatch.setenv("FLEETGATE_SQLITE_SYNCHRONOUS", "normal")
    monkeypatch.setenv("FLEETGATE_BUFFER_FULL_POLICY", "drop_oldest")
    monkeypatch.setenv("FLEETGATE_REMOTE_WRITE_TIMEOUT_S", "2.5")
    monkeypatch.setenv("FLEETGATE_MQTT_USERNAME", "gw")
    monkeypatch.setenv("FLEETGATE_MQTT_PASSWORD", "secret")
    s = load_settings()
    assert s.commit_max_frames == 17
    assert s.store_config().synchronous == "normal"
    assert s.store_config().full_policy == "drop_oldest"
    assert s.forward_config().request_timeout_s == 2.5
    assert s.mqtt_config().password == "secret"


# ---------------------------------------------------------------------------- environment
def test_environment_variables_are_honoured(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    monkeypatch.setenv("FLEETGATE_MQTT_URL", "mqtt://broker.example:1884")
    monkeypatch.setenv("FLEETGATE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FLEETGATE_REMOTE_WRITE_URL",
                       "http://prom:9090/api/v1/write, https://vm.example/api/v1/write")
    monkeypatch.setenv("FLEETGATE_API_LISTEN", "0.0.0.0:9100")
    monkeypatch.setenv("FLEETGATE_TOPIC_PREFIX", "plant7/fleet")
    monkeypatch.setenv("FLEETGATE_GATEWAY_ID", "edge-gw.2")
    monkeypatch.setenv("FLEETGATE_EXTERNAL_LABELS", "site=lab, region=eu")
    s = load_settings()
    mqtt = s.mqtt_config()
    assert (mqtt.host, mqtt.port) == ("broker.example", 1884)
    assert mqtt.topic_prefix == "plant7/fleet"
    assert mqtt.gateway_id == "edge-gw.2"
    assert mqtt.client_id == "fleetgate-edge-gw.2"
    assert s.store_config().db_path == tmp_path / "data" / "fleetgate.db"
    assert s.forward_config().endpoints == ("http://prom:9090/api/v1/write",
                                            "https://vm.example/api/v1/write")
    assert s.api_listen == "0.0.0.0:9100"
    assert s.forward_config().external_labels == (("region", "eu"), ("site", "lab"))


def test_single_remote_write_url_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETGATE_REMOTE_WRITE_URL", "http://prom:9090/api/v1/write")
    assert load_settings().forward_config().endpoints == ("http://prom:9090/api/v1/write",)


def test_mqtt_url_without_port_means_1883(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETGATE_MQTT_URL", "tcp://broker")
    assert load_settings().mqtt_config().port == 1883


# ---------------------------------------------------------------------------- TOML file
def test_toml_file_is_read_with_flat_keys(tmp_path: Path) -> None:
    path = write_toml(tmp_path, """
gateway_id = "gw-file"
mqtt_url = "mqtt://10.0.0.5:1883"
remote_write_url = ["http://a:9090/api/v1/write", "http://b:8428/api/v1/write"]
external_labels = { site = "north", rack = "r2" }
sqlite_synchronous = "normal"
commit_max_delay_ms = 50
buffer_max_bytes = 1048576
""")
    s = load_settings(path)
    assert s.gateway_id == "gw-file"
    assert s.mqtt_config().host == "10.0.0.5"
    assert s.forward_config().endpoints == ("http://a:9090/api/v1/write",
                                            "http://b:8428/api/v1/write")
    assert s.forward_config().external_labels == (("rack", "r2"), ("site", "north"))
    assert s.store_config().synchronous == "normal"
    assert s.store_config().commit_max_delay_s == pytest.approx(0.05)
    assert s.store_config().max_buffer_bytes == 1048576


def test_environment_wins_over_the_file(tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_toml(tmp_path, 'gateway_id = "from-file"\ntopic_prefix = "filefleet"\n')
    monkeypatch.setenv("FLEETGATE_GATEWAY_ID", "from-env")
    s = load_settings(path)
    assert s.gateway_id == "from-env"
    assert s.topic_prefix == "filefleet"  # not set in the environment: the file's value


def test_explicit_overrides_win_over_environment_and_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_toml(tmp_path, 'gateway_id = "from-file"\ncommit_max_frames = 10\n')
    monkeypatch.setenv("FLEETGATE_GATEWAY_ID", "from-env")
    monkeypatch.setenv("FLEETGATE_COMMIT_MAX_FRAMES", "20")
    s = load_settings(path, gateway_id="explicit", commit_max_frames=30)
    assert (s.gateway_id, s.commit_max_frames) == ("explicit", 30)


def test_a_file_read_once_does_not_stick_to_later_loads(tmp_path: Path) -> None:
    load_settings(write_toml(tmp_path, 'gateway_id = "from-file"\n'))
    assert load_settings().gateway_id == "gw1"


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "absent.toml")


def test_unknown_key_in_toml_is_rejected_by_name(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'gateway_id = "gw1"\nremote_write_urls = ["http://a/w"]\n')
    with pytest.raises(ConfigError, match="remote_write_urls"):
        load_settings(path)


def test_nested_toml_table_is_rejected(tmp_path: Path) -> None:
    # The settings are flat: a [mqtt] table is a mistake, not an alternative spelling.
    path = write_toml(tmp_path, '[mqtt]\nurl = "mqtt://x:1883"\n')
    with pytest.raises(ConfigError, match="mqtt"):
        load_settings(path)


def test_invalid_toml_in_file_is_a_config_error(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'gateway_id = "unterminated\n')
    with pytest.raises(ConfigError):
        load_settings(path)


# ---------------------------------------------------------------------------- invalid values
# (setting, bad value, words the message must contain to point the operator at the setting)
INVALID = [
    ("mqtt_url", "http://broker:1883", "mqtt_url"),
    ("mqtt_url", "broker:1883", "mqtt_url"),
    ("mqtt_url", "mqtt://broker:99999", "mqtt_url"),  # port out of range is a bad URL too
    ("remote_write_url", "ftp://prom/api/v1/write", "remote_write_url"),
    ("remote_write_url", "http://ok/api/v1/write,prom:9090/api/v1/write", "remote_write_url"),
    ("remote_write_url", "http:///api/v1/write", "remote_write_url"),  # no host
    ("gateway_id", "gw 1", "gateway_id"),
    ("gateway_id", "gw/1", "gateway_id"),
    ("gateway_id", "-gw", "gateway_id"),
    ("gateway_id", "g" * 65, "gateway_id"),
    ("topic_prefix", "fleet/+", "topic_prefix"),
    ("topic_prefix", "fleet/#", "topic_prefix"),
    ("topic_prefix", "", "topic_prefix"),
    ("external_labels", "1site=lab", "external_labels"),
    ("external_labels", "__name__=x", "external_labels"),
    ("external_labels", "site-name=lab", "external_labels"),
    ("external_labels", "site", "external_labels"),
    # Valid label names the series encoder still refuses at start-up (device_id is the
    # gateway's own label; an empty value means "no label" to Prometheus): they must fail here,
    # as a ConfigError, not later as a traceback from Gateway.start.
    ("external_labels", "device_id=gw1", "external_labels"),
    ("external_labels", "site=", "external_labels"),
    ("buffer_max_bytes", -1, "buffer_max_bytes"),
    ("buffer_max_bytes", 0, "buffer_max_bytes"),
    ("commit_max_frames", -5, "commit_max_frames"),
    ("commit_max_delay_ms", -1, "commit_max_delay_ms"),
    ("remote_write_max_samples", -1, "remote_write_max_samples"),
    ("mqtt_receive_maximum", 0, "mqtt_receive_maximum"),
    ("mqtt_receive_maximum", 65536, "mqtt_receive_maximum"),  # MQTT v5 caps it at 65535
    ("mqtt_max_in_hand", -1, "mqtt_max_in_hand"),
    ("max_frame_bytes", 0, "max_frame_bytes"),
    ("max_samples_per_frame", -1, "max_samples_per_frame"),
    ("ledger_max_ranges", 0, "ledger_max_ranges"),
    ("sqlite_synchronous", "off", "sqlite_synchronous"),
    ("buffer_full_policy", "drop_newest", "buffer_full_policy"),
    ("api_listen", "8080", "api_listen"),
    ("api_listen", "127.0.0.1:http", "api_listen"),
    ("api_listen", "127.0.0.1:99999", "api_listen"),  # no such port: uvicorn fails at start
    ("log_level", "LOUD", "log_level"),  # logging.basicConfig would raise at start-up
]


@pytest.mark.parametrize(("field", "value", "named"), INVALID,
                         ids=[f"{f}={v!s:.20}" for f, v, _ in INVALID])
def test_invalid_value_raises_config_error_naming_the_field(field: str, value: object,
                                                            named: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, **{field: value})
    assert names_field(info.value, named)
    assert "docs/operations.md" in str(info.value)  # the hint points at the reference


def test_log_level_is_case_insensitive() -> None:
    assert load_settings(log_level="debug").log_level.upper() == "DEBUG"


@pytest.mark.parametrize(("env", "value", "field"), [
    ("FLEETGATE_MQTT_URL", "mqtts//broker", "mqtt_url"),
    ("FLEETGATE_REMOTE_WRITE_URL", "prom:9090", "remote_write_url"),
    ("FLEETGATE_GATEWAY_ID", "gw#1", "gateway_id"),
    ("FLEETGATE_EXTERNAL_LABELS", "a=b,c", "external_labels"),
    ("FLEETGATE_BUFFER_MAX_BYTES", "-100", "buffer_max_bytes"),
    ("FLEETGATE_COMMIT_MAX_FRAMES", "many", "commit_max_frames"),
])
def test_invalid_environment_value_raises_config_error(
        monkeypatch: pytest.MonkeyPatch, env: str, value: str, field: str) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert names_field(info.value, field)


@pytest.mark.parametrize("field", [
    "mqtt_keepalive_s",
    "mqtt_session_expiry_s",
    "mqtt_reconnect_min_s",
    "mqtt_reconnect_max_s",
    "remote_write_flush_ms",
    "remote_write_timeout_s",
    "remote_write_retry_min_s",
    "remote_write_retry_max_s",
    "shutdown_forward_deadline_s",
    "max_clock_skew_s",
    "dedup_retention_days",
])
def test_negative_durations_are_rejected(field: str) -> None:
    # A negative timeout or backoff is never meant: paho refuses a negative keepalive at
    # connect, a negative request timeout makes every remote-write attempt fail at once.
    with pytest.raises(ConfigError) as info:
        load_settings(None, **{field: -1})
    assert names_field(info.value, field)


@pytest.mark.parametrize("field", ["commit_max_delay_ms", "remote_write_flush_ms",
                                   "shutdown_forward_deadline_s", "max_clock_skew_s"])
def test_zero_is_a_valid_wait(field: str) -> None:
    # 0 means "do not wait": commit or send what is there, no last forward, no skew allowed.
    assert getattr(load_settings(None, **{field: 0}), field) == 0


@pytest.mark.parametrize(("low", "high"), [
    ("mqtt_reconnect_min_s", "mqtt_reconnect_max_s"),
    ("remote_write_retry_min_s", "remote_write_retry_max_s"),
])
def test_backoff_minimum_above_maximum_is_rejected(low: str, high: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, **{low: 10.0, high: 5.0})
    assert names_field(info.value, low)
    assert load_settings(None, **{low: 5.0, high: 5.0})  # equal is fine: a fixed delay


def test_duplicate_remote_write_urls_are_rejected() -> None:
    # Cursors are keyed by URL: two forwarders would share one cursor row, and
    # store.advance_cursor (which counts distinct cursor rows against the endpoint list) would
    # never see "every endpoint passed", so no frame would ever be deleted.
    with pytest.raises(ConfigError) as info:
        load_settings(remote_write_url="http://prom/api/v1/write,http://prom/api/v1/write")
    assert names_field(info.value, "remote_write_url")


def test_config_error_does_not_echo_the_mqtt_password(monkeypatch: pytest.MonkeyPatch) -> None:
    # The error is printed to stderr (and so to the journal) by `fleetgate run`.
    monkeypatch.setenv("FLEETGATE_MQTT_PASSWORD", "Xq7-horse-battery")
    monkeypatch.setenv("FLEETGATE_BUFFER_MAX_BYTES", "-1")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "Xq7" not in str(info.value)  # not even a prefix of it


def test_slices_are_frozen_values() -> None:
    # A stage must not be able to change a setting another stage also reads.
    s = load_settings()
    for piece in (s.mqtt_config(), s.store_config(), s.forward_config()):
        with pytest.raises(dataclasses.FrozenInstanceError):
            piece.__setattr__(dataclasses.fields(piece)[0].name, None)
