"""docker-compose.yml, checked without a Docker daemon.

`docker-compose config` resolves the file (interpolation, relative paths, the Compose schema);
the rest is checked on its output: what the containers would mount, publish and run. The
Prometheus config is checked by promtool in a directory laid out like the container's
/etc/prometheus (so its rule_files resolve to the mounted rules, which promtool then checks),
and the Alertmanager config by amtool. Running the stack itself needs Docker and is not done.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.support.tools import system_tool

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
RULES = REPO / "deploy" / "prometheus" / "rules"

# Each service and the ports it must publish as (host, container); None: publishes nothing.
PUBLISHED = {
    "mosquitto": {(1883, 1883)},
    "gateway": {(8080, 8080)},
    "simulator": None,
    "prometheus": {(9090, 9090)},
    "alertmanager": {(9093, 9093)},
    "grafana": {(3000, 3000)},
}
# Variables the file interpolates: the test checks the defaults, whatever the shell has set.
INTERPOLATED = ("SIM_DEVICES", "SIM_FAULT", "SIM_SEED", "GRAFANA_ADMIN_PASSWORD")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The resolved compose file, as `docker-compose config` prints it."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("COMPOSE_") and k not in INTERPOLATED}
    # `config` never talks to a daemon (there is none on CI machines); a DOCKER_HOST that
    # points nowhere makes sure this stays true rather than depending on the machine.
    env["DOCKER_HOST"] = "unix:///nonexistent/docker.sock"
    done = subprocess.run(
        [system_tool("docker-compose", "docker-compose"), "--file", str(COMPOSE_FILE),
         "--project-directory", str(REPO), "config"],
        capture_output=True, text=True, timeout=60, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr
    resolved: dict[str, Any] = yaml.safe_load(done.stdout)
    return resolved


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of every volume; a bind's source is an absolute path."""
    result = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):  # docker-compose 1.x: "source:target[:mode]"
            source, target, *mode = volume.split(":")
            result.append((source, target, "ro" in mode))
        else:  # the long form (the `docker compose` plugin prints only this one)
            result.append((volume["source"], volume["target"], bool(volume.get("read_only"))))
    return result


def binds(service: dict[str, Any]) -> list[tuple[Path, PurePosixPath]]:
    return [(Path(source), PurePosixPath(target)) for source, target, _ in mounts(service)
            if source.startswith("/")]


def published(service: dict[str, Any]) -> set[tuple[int, int]]:
    result = set()
    for port in service.get("ports", []):
        if isinstance(port, str):  # "[host_ip:]published:target[/protocol]"
            *_, host, container = port.split("/")[0].split(":")
            result.add((int(host), int(container)))
        else:
            result.add((int(port["published"]), int(port["target"])))
    return result


def command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command", [])
    return shlex.split(cmd) if isinstance(cmd, str) else [str(part) for part in cmd]


def flag(args: list[str], name: str) -> str:
    """The value of `--name=value` or `--name value` in a command line."""
    for i, arg in enumerate(args):
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
        if arg == name:
            return args[i + 1]
    raise AssertionError(f"{name} not in {args}")


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None, url
    return parts.hostname, parts.port


def test_every_service_is_there_and_publishes_its_ports(compose: dict[str, Any]) -> None:
    found = services(compose)
    assert set(found) == set(PUBLISHED)
    for name, ports in PUBLISHED.items():
        assert published(found[name]) == (ports or set()), name


def test_bind_mounts_exist_as_what_the_container_expects(compose: dict[str, Any]) -> None:
    # A missing source is no error to Compose: Docker creates an empty directory in its place,
    # and the service starts without its config (or fails on "is a directory").
    checked = 0
    for name, service in services(compose).items():
        for source, target in binds(service):
            assert source.is_relative_to(REPO), f"{name}: {source} is outside the checkout"
            if target.suffix:  # a config file, e.g. /etc/mosquitto/mosquitto.conf
                assert source.is_file(), f"{name}: {source} (for {target}) is not a file"
            else:
                assert source.is_dir(), f"{name}: {source} (for {target}) is not a directory"
            checked += 1
    assert checked >= 6
    declared = set(compose.get("volumes") or {})
    for name, service in services(compose).items():
        for volume, _target, _ro in mounts(service):
            assert volume.startswith("/") or volume in declared, f"{name}: volume {volume}"


def test_built_services_have_a_dockerfile_and_a_context_holding_what_it_copies(
        compose: dict[str, Any]) -> None:
    built = {name: s["build"] for name, s in services(compose).items() if "build" in s}
    assert set(built) == {"gateway", "simulator"}
    # Both must run the same image, the one that is built.
    assert {services(compose)[name].get("image") for name in built} == {"fleetgate:local"}
    for build in built.values():
        context = Path(build["context"])
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), dockerfile
        sources = [src for line in dockerfile.read_text().splitlines()
                   if line.startswith("COPY ") and "--from=" not in line
                   for src in line.split()[1:-1]]
        assert sources, f"{dockerfile} copies nothing from the context"
        sent = context_files(context)
        for src in sources:
            src = src.rstrip("/")
            assert (context / src).exists(), f"{dockerfile}: COPY {src}: no such file"
            assert any(f == src or f.startswith(src + "/") for f in sent), (
                f"{dockerfile}: COPY {src} is excluded by .dockerignore")
        assert not any(f.split("/")[0] in {".venv", "var", ".git", "tests"} for f in sent)


def context_files(context: Path) -> list[str]:
    """The files docker-compose 1.29 sends as the build context (.dockerignore applied), by
    docker-py's own code, which that docker-compose runs on."""
    compose_bin = system_tool("docker-compose", "docker-compose")
    shebang = Path(compose_bin).read_bytes()[:200].splitlines()[0].decode(errors="replace")
    if not shebang.startswith("#!") or "python" not in shebang:
        # install-system-deps.sh installs Debian's Python docker-compose 1.29; anything else
        # there means the install step changed, which CI must not pass over.
        message = f"{compose_bin} is not the Python docker-compose (no docker-py to ask)"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    script = ("import sys; from docker.utils.build import exclude_paths; "
              "from pathlib import Path; root = Path(sys.argv[1]); "
              "ignore = root / '.dockerignore'; "
              "patterns = ignore.read_text().splitlines() if ignore.exists() else []; "
              "print('\\n'.join(sorted(exclude_paths(str(root), patterns))))")
    done = subprocess.run([*shlex.split(shebang[2:]), "-c", script, str(context)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_gateway_settings_point_at_the_other_services(
        compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.settings import load_settings, parse_listen, parse_mqtt_url

    found = services(compose)
    gateway = found["gateway"]
    # The gateway reads these through its own settings code: a misspelt FLEETGATE_ name would
    # leave the default (loopback) in place.
    for key in list(os.environ):
        if key.startswith("FLEETGATE_"):
            monkeypatch.delenv(key)
    for key, value in gateway["environment"].items():
        monkeypatch.setenv(key, str(value))
    settings = load_settings()
    assert parse_mqtt_url(settings.mqtt_url) == ("mosquitto", 1883, False)
    assert settings.remote_write_url == ["http://prometheus:9090/api/v1/write"]
    listen_host, listen_port = parse_listen(settings.api_listen)
    assert listen_host == "0.0.0.0"
    assert (8080, listen_port) in published(gateway)
    healthcheck = " ".join(gateway["healthcheck"]["test"])
    assert f"http://127.0.0.1:{listen_port}/healthz" in healthcheck
    # The data dir is a named volume, so the buffer outlives the container.
    volumes = {target: source for source, target, _ in mounts(gateway)}
    assert str(settings.data_dir) in volumes
    assert not volumes[str(settings.data_dir)].startswith("/")
    assert found["simulator"]["depends_on"]["gateway"]["condition"] == "service_healthy"


def test_simulator_command_is_accepted_by_the_simulator(compose: dict[str, Any]) -> None:
    from firmware_sim.__main__ import build_parser, config_from_args

    args = command(services(compose)["simulator"])
    assert args[:2] == ["fleetgate", "sim"]
    parsed = build_parser().parse_args(args[2:])
    config = config_from_args(parsed)  # raises on unknown profiles and bad fault specs
    assert host_port(config.mqtt_url) == ("mosquitto", 1883)
    assert config.devices == 50
    assert parsed.fault, "the compose fleet should run with a fault to alert on"


@pytest.fixture(scope="module")
def prometheus_dir(compose: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the prometheus container's /etc/prometheus, from the compose bind mounts."""
    root = tmp_path_factory.mktemp("container")
    for source, target in binds(services(compose)["prometheus"]):
        copy = root / target.relative_to("/")
        copy.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, copy)
        else:
            shutil.copy2(source, copy)
    return root


def test_prometheus_runs_the_receiver_and_loads_every_rule_file(
        compose: dict[str, Any], prometheus_dir: Path) -> None:
    args = command(services(compose)["prometheus"])
    assert "--web.enable-remote-write-receiver" in args
    config_file = prometheus_dir / PurePosixPath(flag(args, "--config.file")).relative_to("/")
    config = yaml.safe_load(config_file.read_text())
    assert config["storage"]["tsdb"]["out_of_order_time_window"] == "30m"
    # Prometheus globs each entry and ignores one that matches nothing, so a typo or a file
    # missing from the list would go unnoticed: every entry must load something, and every
    # rule file (not their *_test.yml) must be loaded.
    loaded: set[str] = set()
    for entry in config["rule_files"]:
        matches = {p.name for p in config_file.parent.glob(entry)}
        assert matches, f"rule_files entry {entry!r} matches no file"
        loaded |= matches
    shipped = {p.name for p in RULES.glob("*.yml") if not p.name.endswith("_test.yml")}
    assert loaded == shipped

    checked = subprocess.run([system_tool("promtool", "prometheus"), "check", "config",
                              str(config_file)],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for name in shipped:  # promtool checked the rules too
        assert f"rules/{name}\n  SUCCESS" in checked.stdout, checked.stdout


def test_prometheus_targets_are_compose_services(
        compose: dict[str, Any], prometheus_dir: Path) -> None:
    found = services(compose)
    config = yaml.safe_load((prometheus_dir / "etc/prometheus/prometheus.yml").read_text())
    scraped = {target for job in config["scrape_configs"]
               for static in job.get("static_configs", []) for target in static["targets"]}
    assert "gateway:8080" in scraped
    alertmanagers = {target for am in config["alerting"]["alertmanagers"]
                     for static in am["static_configs"] for target in static["targets"]}
    assert alertmanagers == {"alertmanager:9093"}
    for target in scraped | alertmanagers:
        host, _, port = target.rpartition(":")
        if host != "localhost":
            assert host in found, target
            assert any(container == int(port) for _, container in published(found[host])), target


def test_alertmanager_config_is_valid(compose: dict[str, Any]) -> None:
    alertmanager = services(compose)["alertmanager"]
    config_target = PurePosixPath(flag(command(alertmanager), "--config.file"))
    sources = {target: source for source, target in binds(alertmanager)}
    config_file = sources[config_target]
    checked = subprocess.run([system_tool("amtool", "prometheus-alertmanager"), "check-config",
                              str(config_file)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    route = yaml.safe_load(config_file.read_text())["route"]
    assert set(route["group_by"]) == {"alertname", "profile", "severity"}


def test_grafana_provisioning_points_at_the_compose_services(compose: dict[str, Any]) -> None:
    found = services(compose)
    grafana = found["grafana"]
    sources = {target: source for source, target in binds(grafana)}
    provisioning = sources[PurePosixPath("/etc/grafana/provisioning")]
    datasources = [ds for f in sorted((provisioning / "datasources").glob("*.yml"))
                   for ds in yaml.safe_load(f.read_text()).get("datasources", [])]
    assert datasources, "no datasource provisioned"
    for ds in datasources:
        host, port = host_port(ds["url"])
        assert host in found and any(c == port for _, c in published(found[host])), ds["url"]
    providers = [p for f in sorted((provisioning / "dashboards").glob("*.yml"))
                 for p in yaml.safe_load(f.read_text()).get("providers", [])]
    assert providers, "no dashboard provider provisioned"
    for provider in providers:
        path = PurePosixPath(provider["options"]["path"])
        assert path in sources, f"dashboard provider path {path} is not mounted"
        assert list(sources[path].glob("*.json")), f"no dashboards in {sources[path]}"
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
