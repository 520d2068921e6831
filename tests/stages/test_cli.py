"""`fleetgate db status|migrate`, settings errors, and only wheel-safe commands on the command
line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.buffer.db import discover_migrations
from gateway.cli import main


def test_db_status_and_migrate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FLEETGATE_DATA_DIR", str(tmp_path / "data"))
    assert main(["db", "status"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["exists"] is False  # status never creates a database
    assert not (tmp_path / "data").exists()

    assert main(["db", "migrate"]) == 0
    assert f"schema version {len(discover_migrations())}" in capsys.readouterr().out

    assert main(["db", "status"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["schema_version"] == len(discover_migrations())
    assert status["pending"] == []
    assert status["tables"]["frames"] == 0


def test_the_installed_command_has_no_demo(capsys: pytest.CaptureFixture[str]) -> None:
    """The demo needs devstack, which is not in the wheel: it runs from a checkout only
    (`make demo`), so the installed command does not offer it."""
    with pytest.raises(SystemExit) as exited:
        main(["demo"])
    assert exited.value.code == 2
    assert "invalid choice: 'demo'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "usage: fleetgate [-h] {run,db,sim,certs}" in capsys.readouterr().out


def test_bad_settings_exit_2_with_the_field_named(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FLEETGATE_MQTT_URL", "http://not-mqtt")
    assert main(["db", "status"]) == 2
    assert "mqtt_url" in capsys.readouterr().err


def test_config_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "fleetgate.toml"
    config.write_text(f'data_dir = "{tmp_path / "from-toml"}"\n')
    assert main(["db", "migrate", "--config", str(config)]) == 0
    assert (tmp_path / "from-toml" / "fleetgate.db").exists()


def test_run_fails_fast_when_the_api_port_is_taken(tmp_path: Path) -> None:
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "FLEETGATE_DATA_DIR": str(tmp_path / "data"),
               "FLEETGATE_API_LISTEN": f"127.0.0.1:{port}",
               "FLEETGATE_MQTT_URL": "mqtt://127.0.0.1:1"}  # never reached
        result = subprocess.run([sys.executable, "-m", "gateway.cli", "run"], env=env,
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert f"could not listen on 127.0.0.1:{port}" in result.stderr


def test_run_refuses_a_data_dir_another_gateway_holds(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from devstack import free_port
    from gateway.buffer.datadir_lock import DataDirLock

    other = DataDirLock(tmp_path / "data")
    other.acquire()  # as a running gateway holds it
    try:
        env = {**os.environ, "FLEETGATE_DATA_DIR": str(tmp_path / "data"),
               "FLEETGATE_API_LISTEN": f"127.0.0.1:{free_port()}",
               "FLEETGATE_MQTT_URL": "mqtt://127.0.0.1:1"}  # never reached
        result = subprocess.run([sys.executable, "-m", "gateway.cli", "run"], env=env,
                                capture_output=True, text=True, timeout=60)
    finally:
        other.release()
    assert result.returncode == 2, result.stderr
    assert f"is in use by another fleetgate (pid {os.getpid()})" in result.stderr
    assert not (tmp_path / "data" / "fleetgate.db").exists()  # refused before touching it


def test_the_data_dir_lock_is_free_again_once_released(tmp_path: Path) -> None:
    from gateway.buffer.datadir_lock import DataDirLock
    from gateway.errors import ConfigError

    first, second = DataDirLock(tmp_path), DataDirLock(tmp_path)
    first.acquire()
    with pytest.raises(ConfigError):
        second.acquire()
    first.release()
    second.acquire()
    second.release()
