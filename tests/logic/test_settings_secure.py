"""Issue 13's settings: endpoint objects, mqtts://, credential files, HTTPS for the API, and
unknown setting names refused at start-up with the closest valid name."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.settings import load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("FLEETGATE_"):
            monkeypatch.delenv(name)


def secret(tmp_path: Path, name: str, value: str = "s3cret-value") -> Path:
    path = tmp_path / name
    path.write_text(value + "\n")
    return path


# ------------------------------------------------------------------ unknown names
def test_a_mistyped_environment_variable_is_a_start_up_error_naming_the_closest(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETGATE_MQTT_CA_FIL", "/etc/ssl/ca.pem")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "FLEETGATE_MQTT_CA_FIL" in str(info.value)
    assert "did you mean FLEETGATE_MQTT_CA_FILE?" in str(info.value)


def test_lower_case_variables_are_read_and_checked_like_upper_case(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("fleetgate_gateway_id", "gw7")  # pydantic-settings reads it
    assert load_settings().gateway_id == "gw7"
    monkeypatch.setenv("fleetgate_gatway_id", "gw8")
    with pytest.raises(ConfigError, match="did you mean FLEETGATE_GATEWAY_ID"):
        load_settings()


def test_a_mistyped_toml_key_is_a_start_up_error(tmp_path: Path) -> None:
    path = tmp_path / "fleetgate.toml"
    path.write_text('mqtt_cert_fle = "/x.pem"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert "'mqtt_cert_fle'" in str(info.value) and "did you mean mqtt_cert_file?" in str(
        info.value)
    assert str(path) in str(info.value)


def test_a_mistyped_key_of_a_remote_write_table_names_the_table_and_closest_key(
        tmp_path: Path) -> None:
    path = tmp_path / "fleetgate.toml"
    path.write_text('[[remote_write]]\nurl = "https://a/w"\n'
                    '[[remote_write]]\nurl = "https://b/w"\nbearer_token_fil = "/t"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert "'bearer_token_fil' in [[remote_write]] #2" in str(info.value)
    assert "did you mean bearer_token_file?" in str(info.value)


def test_a_mistyped_key_in_the_remote_write_json_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETGATE_REMOTE_WRITE", json.dumps([{"url": "https://a/w",
                                                               "header": {"X": "1"}}]))
    with pytest.raises(ConfigError, match="did you mean headers"):
        load_settings()


def test_nothing_close_gives_no_suggestion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETGATE_ZZZZZZZZ", "1")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "FLEETGATE_ZZZZZZZZ" in str(info.value) and "did you mean" not in str(info.value)


# ------------------------------------------------------------------ endpoint objects
def test_remote_write_tables_in_toml_become_endpoints_after_the_plain_urls(
        tmp_path: Path) -> None:
    token = secret(tmp_path, "token")
    path = tmp_path / "fleetgate.toml"
    path.write_text(f'''
remote_write_url = "http://prom:9090/api/v1/write"
[[remote_write]]
url = "https://vmauth.example:8427/api/v1/write?extra_label=x"
bearer_token_file = "{token}"
headers = {{ "X-Scope-OrgID" = "fleet-a" }}
timeout_s = 3.5
[[remote_write]]
url = "https://mimir.example/api/v1/push"
name = "mimir"
''')
    forward = load_settings(path).forward_config()
    assert forward.endpoints == ("http://prom:9090/api/v1/write",
                                 "https://vmauth.example:8427/api/v1/write", "mimir")
    vm = forward.targets[1]
    assert vm.bearer_token_file == token and vm.timeout_s == 3.5
    assert vm.headers == {"X-Scope-OrgID": "fleet-a"}
    assert forward.targets[0].bearer_token_file is None


def test_remote_write_json_in_the_environment(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    password = secret(tmp_path, "pw")
    monkeypatch.setenv("FLEETGATE_REMOTE_WRITE", json.dumps([{
        "url": "https://prom:9090/api/v1/write", "name": "prom",
        "basic_auth_username": "fleet", "basic_auth_password_file": str(password)}]))
    (target,) = load_settings().forward_config().targets
    assert (target.name, target.basic_auth_username) == ("prom", "fleet")


@pytest.mark.parametrize(("endpoint", "words"), [
    ({"url": "ftp://x/w"}, "http(s)://"),
    ({"url": "https://user:pw@x/w"}, "not in the URL"),
    ({"url": "https://x/w", "bearer_token_file": "/t", "basic_auth_username": "u",
      "basic_auth_password_file": "/p"}, "exclusive"),
    ({"url": "https://x/w", "basic_auth_username": "u"}, "needs both"),
    ({"url": "https://x/w", "cert_file": "/c"}, "cert_file and key_file"),
    ({"url": "http://x/w", "ca_file": "/ca"}, "need an https url"),
    ({"url": "https://x/w", "headers": {"Authorization": "Bearer x"}}, "set by the gateway"),
    ({"url": "https://x/w", "headers": {"Bad Header": "1"}}, "not a valid HTTP header"),
    ({"url": "https://x/w", "timeout_s": 0}, "timeout_s"),
])
def test_an_inconsistent_endpoint_is_refused_naming_what_is_wrong(
        endpoint: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(remote_write=[endpoint])
    assert words in str(info.value)


def test_the_same_endpoint_twice_is_refused_across_both_settings() -> None:
    with pytest.raises(ConfigError, match="same url"):
        load_settings(remote_write_url="https://x/w", remote_write=[{"url": "https://x/w"}])
    with pytest.raises(ConfigError, match="same name"):
        load_settings(remote_write=[{"url": "https://x/w", "name": "a"},
                                    {"url": "https://y/w", "name": "a"}])


def test_an_error_never_echoes_a_secret_given_in_the_url() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(remote_write=[{"url": "https://user:hunter2@x/w"}])
    assert "hunter2" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_settings(mqtt_url="mqtts://gw:hunter2@broker:8883")
    assert "hunter2" not in str(info.value)


# ------------------------------------------------------------------ MQTT over TLS
def test_mqtts_defaults_to_port_8883_with_tls_files(tmp_path: Path) -> None:
    ca = secret(tmp_path, "ca.pem")
    s = load_settings(mqtt_url="mqtts://broker.example", mqtt_ca_file=ca,
                      mqtt_cert_file=tmp_path / "gw.crt", mqtt_key_file=tmp_path / "gw.key")
    mqtt = s.mqtt_config()
    assert (mqtt.host, mqtt.port) == ("broker.example", 8883)
    assert mqtt.tls is not None and mqtt.tls.ca_file == ca
    assert mqtt.tls.cert_file == tmp_path / "gw.crt"
    assert load_settings().mqtt_config().tls is None  # mqtt:// stays plain


def test_tls_files_with_a_plain_mqtt_url_are_refused_not_ignored() -> None:
    with pytest.raises(ConfigError, match="need an mqtts://"):
        load_settings(mqtt_ca_file="/ca.pem")


def test_mqtt_password_from_a_file_is_exclusive_with_the_plain_one(tmp_path: Path) -> None:
    pw = secret(tmp_path, "pw")
    with pytest.raises(ConfigError, match="not both"):
        load_settings(mqtt_username="gw", mqtt_password="x", mqtt_password_file=pw)
    with pytest.raises(ConfigError, match="needs mqtt_username"):
        load_settings(mqtt_password_file=pw)
    s = load_settings(mqtt_username="gw", mqtt_password_file=pw)
    assert s.mqtt_config("from-file").password == "from-file"


def test_the_password_is_not_in_the_settings_repr() -> None:
    s = load_settings(mqtt_username="gw", mqtt_password="hunter2")
    assert "hunter2" not in repr(s) and "hunter2" not in repr(s.mqtt_config())


# ------------------------------------------------------------------ API
def test_api_tokens_file_adds_to_api_tokens(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# operators\nabc:read\ndef:admin, ghi:read\n")
    s = load_settings(api_tokens="zzz:admin", api_tokens_file=path)
    assert s.api_tokens == {"zzz": "admin", "abc": "read", "def": "admin", "ghi": "read"}


@pytest.mark.parametrize("content", ["", "abc\n", "abc:root\n"])
def test_a_bad_api_tokens_file_is_refused_without_echoing_it(tmp_path: Path,
                                                             content: str) -> None:
    path = tmp_path / "tokens"
    path.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_settings(api_tokens_file=path)
    assert "api_tokens_file" in str(info.value)
    assert "abc" not in str(info.value)


def test_api_https_needs_both_files() -> None:
    with pytest.raises(ConfigError, match="api_tls_cert_file and api_tls_key_file"):
        load_settings(api_tls_cert_file="/c.pem")
