"""The wheel is the product alone, and it works alone.

Built from this checkout, the wheel holds device_protocol, gateway (with the migrations and the
fleet page's files), firmware_sim and fleetgate_device (the device SDK the simulator runs on),
and nothing else: no devstack, tests or bench. Installed
into a fresh venv, with its declared dependencies and no path back to the checkout,
`fleetgate run` gets ready against a real Mosquitto and exits 0 on SIGTERM.

Both steps go through pip the way a user's `pip install .` does: the build runs in pip's build
isolation (hatchling comes from the package index, so .venv needs no build backend), and the
install resolves the wheel's own Requires-Dist from the index, so an import the package uses but
does not declare fails here. Measured: ~3 s to build, ~8 s to install (warm pip cache).

The device SDK (sdk/python, distribution fleetgate-device) is also a wheel of its own: it
declares paho-mqtt and msgpack and nothing else, and installed alone into a fresh venv it
imports and builds frames without FastAPI, uvicorn, pydantic or prometheus_client (~5 s).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack import GatewayProcess, Mosquitto
from devstack.checkout import REPO_ROOT

pytestmark = pytest.mark.e2e

PRODUCT_PACKAGES = {"device_protocol", "gateway", "firmware_sim", "fleetgate_device"}
# Where each package lives in the checkout (the SDK has its own distribution under sdk/python).
CHECKOUT_DIRS = {"fleetgate_device": "sdk/python/fleetgate_device"}
PIP_TIMEOUT_S = 180.0
# Variables that would put the checkout back on the installed interpreter's path.
_LEAKY_ENV = ("PYTHONPATH", "PYTHONHOME")


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _LEAKY_ENV}


def _pip(*args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "pip", *args, "--quiet"], env=_clean_env(),
                            capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    assert result.returncode == 0, f"pip {' '.join(args)}:\n{result.stdout}{result.stderr}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    _pip("wheel", "--no-deps", "--wheel-dir", str(out), str(REPO_ROOT))
    (built,) = out.glob("fleetgate-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (no system site-packages) with the wheel and its dependencies only."""
    path = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True,
                   timeout=60)
    # .venv's pip installs into it (`--python`), so the venv needs no pip of its own.
    _pip("--python", str(path / "bin" / "python"), "install", str(wheel))
    return path


def _checkout_files(package: str, pattern: str) -> set[str]:
    """The files as the wheel names them: `package/...`, wherever the package lives."""
    root = REPO_ROOT / CHECKOUT_DIRS.get(package, package)
    return {f"{package}/{p.relative_to(root).as_posix()}" for p in root.rglob(pattern)
            if p.is_file() and "__pycache__" not in p.parts}


def test_the_wheel_holds_the_product_and_nothing_else(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    top = {name.split("/")[0] for name in names}
    (dist_info,) = [t for t in top if t.endswith(".dist-info")]
    assert top - {dist_info} == PRODUCT_PACKAGES  # no devstack, tests, bench, migrations/
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]

    # Every module of the product packages, as in the checkout.
    modules = {n for n in names if n.endswith(".py")}
    assert modules == set().union(*(_checkout_files(p, "*.py") for p in PRODUCT_PACKAGES))
    # The migrations, where the gateway looks for them (pyproject's force-include).
    migrations = {n.rsplit("/", 1)[1] for n in names
                  if n.startswith("gateway/buffer/_migrations/") and n.endswith(".sql")}
    shipped = {p.name for p in (REPO_ROOT / "migrations").glob("*.sql")}
    assert shipped and migrations == shipped
    # The fleet page's static files.
    static = {n for n in names if n.startswith("gateway/api/static/") and not n.endswith("/")}
    assert static and static == _checkout_files("gateway/api/static", "*")

    entry_points = zipfile.ZipFile(wheel).read(f"{dist_info}/entry_points.txt").decode()
    assert "fleetgate = gateway.cli:main" in entry_points


class InstalledGateway(GatewayProcess):
    """`fleetgate run` from the venv's console script, with nothing of the checkout on its path
    (its cwd is its own work dir; GatewayProcess clears FLEETGATE_*, this clears PYTHON*)."""

    def __init__(self, venv: Path, workdir: Path, *, mqtt_url: str) -> None:
        super().__init__(workdir, mqtt_url=mqtt_url)
        self.binary_names = (str(venv / "bin" / "fleetgate"),)

    def _command(self, binary: str) -> list[str]:
        return [binary, "run"]

    def _env(self) -> dict[str, str]:
        return {k: v for k, v in super()._env().items() if k not in _LEAKY_ENV}


def test_the_installed_venv_has_the_product_only(venv: Path, tmp_path: Path) -> None:
    probe = ("import importlib.util, json, device_protocol, firmware_sim, gateway,"
             " fleetgate_device;"
             "print(json.dumps({'files': [m.__file__ for m in"
             " (device_protocol, firmware_sim, gateway, fleetgate_device)],"
             " 'devstack': importlib.util.find_spec('devstack') is not None}))")
    result = subprocess.run([str(venv / "bin" / "python"), "-c", probe], cwd=tmp_path,
                            env=_clean_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert all(Path(f).is_relative_to(venv) for f in found["files"]), found
    assert found["devstack"] is False


@pytest.fixture
def installed_gateway(venv: Path, mosquitto: Mosquitto,
                      tmp_path: Path) -> Iterator[InstalledGateway]:
    gateway = InstalledGateway(venv, tmp_path / "gateway", mqtt_url=mosquitto.url)
    try:
        yield gateway
    finally:
        gateway.stop()


def test_fleetgate_run_from_the_wheel_serves_and_stops_cleanly(
        installed_gateway: InstalledGateway) -> None:
    gateway = installed_gateway.start()  # returns once /readyz answers 200
    assert gateway.http.get("/readyz").status_code == 200
    # The fleet page and its static files come from the installed package.
    page = gateway.http.get("/")
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert gateway.http.get("/static/app.js").status_code == 200
    assert (gateway.data_dir / "fleetgate.db").exists()  # the migrations were found and applied

    gateway.stop(timeout=30)  # SIGTERM; SIGKILL only after 30 s
    assert gateway.returncode == 0, gateway.log_tail()


@pytest.fixture(scope="module")
def sdk_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sdk-wheel")
    _pip("wheel", "--no-deps", "--wheel-dir", str(out), str(REPO_ROOT / "sdk" / "python"))
    (built,) = out.glob("fleetgate_device-*.whl")
    return built


def test_the_device_sdk_installs_alone_with_paho_and_msgpack_only(
        sdk_wheel: Path, tmp_path: Path) -> None:
    archive = zipfile.ZipFile(sdk_wheel)
    names = set(archive.namelist())
    (dist_info,) = {n.split("/")[0] for n in names if ".dist-info/" in n}
    assert {n.split("/")[0] for n in names} - {dist_info} == {"fleetgate_device"}
    assert {n for n in names if n.endswith(".py")} == _checkout_files("fleetgate_device", "*.py")
    metadata = archive.read(f"{dist_info}/METADATA").decode()
    requires = sorted(line.split(":", 1)[1].strip() for line in metadata.splitlines()
                      if line.startswith("Requires-Dist:"))
    assert requires == ["msgpack<2,>=1.0.8", "paho-mqtt<2.3,>=2.1"]

    venv = tmp_path / "sdk-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=60)
    _pip("--python", str(venv / "bin" / "python"), "install", str(sdk_wheel))
    probe = ("import importlib.util, json, fleetgate_device as f;"
             "from fleetgate_device.core import DeviceCore;"
             "c = DeviceCore('pi-07', hw='h', fw='f', interval_ms=1000);"
             "out = c.on_connect(1) + c.telemetry(2, [f.Sample('x', 1.0)]);"
             "print(json.dumps({'file': f.__file__, 'publishes': len(out),"
             " 'device': f.Device.__name__, 'others': [m for m in ('fastapi', 'uvicorn',"
             " 'pydantic', 'prometheus_client', 'gateway', 'device_protocol')"
             " if importlib.util.find_spec(m) is not None]}))")
    result = subprocess.run([str(venv / "bin" / "python"), "-c", probe], cwd=tmp_path,
                            env=_clean_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert Path(found["file"]).is_relative_to(venv)
    assert found["publishes"] == 3  # a birth; then a birth declaring x, and the frame
    assert found["device"] == "Device"
    assert found["others"] == []
