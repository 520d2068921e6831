"""`fleetgate db status` and start-up errors with every secret setting in use: no secret (a
token file's content, the MQTT password) is printed, and a mistyped setting stops the command."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gateway.cli import main

TOKEN = "tok-" + "5" * 36
PASSWORD = "pw-" + "8" * 30


@pytest.fixture
def secret_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("FLEETGATE_"):
            monkeypatch.delenv(name)
    token, pw = tmp_path / "token", tmp_path / "mqtt.pw"
    token.write_text(TOKEN + "\n")
    pw.write_text(PASSWORD + "\n")
    monkeypatch.setenv("FLEETGATE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FLEETGATE_MQTT_USERNAME", "fleetgate")
    monkeypatch.setenv("FLEETGATE_MQTT_PASSWORD_FILE", str(pw))
    monkeypatch.setenv("FLEETGATE_API_TOKENS", f"{TOKEN}:admin")
    monkeypatch.setenv("FLEETGATE_REMOTE_WRITE", json.dumps([{
        "url": "https://vm.example:8427/api/v1/write", "name": "vm",
        "bearer_token_file": str(token), "headers": {"X-Scope-OrgID": "fleet-a"}}]))


@pytest.mark.usefixtures("secret_settings")
def test_db_status_and_migrate_show_no_secret(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "migrate"]) == 0
    assert main(["db", "status"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out.split("\n", 1)[1])["schema_version"] > 0
    for text in (out, err):
        assert TOKEN not in text and PASSWORD not in text


@pytest.mark.usefixtures("secret_settings")
def test_a_mistyped_secret_setting_stops_the_command_naming_the_closest(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FLEETGATE_MQTT_PASWORD_FILE", "/etc/fleetgate/mqtt.pw")
    assert main(["db", "status"]) == 2
    err = capsys.readouterr().err
    assert "FLEETGATE_MQTT_PASWORD_FILE" in err
    assert "did you mean FLEETGATE_MQTT_PASSWORD_FILE?" in err
    assert TOKEN not in err and PASSWORD not in err
