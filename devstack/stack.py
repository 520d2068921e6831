"""Launch real Mosquitto, Prometheus and VictoriaMetrics processes on loopback for tests and
`fleetgate demo`.

Each service runs from the Debian package's binary in its own work dir on a port of its own, so
any number of them can run side by side. A process is started in a new session and stopped by
its PID only: stopping one never touches another test's processes. Binaries come from
`scripts/install-system-deps.sh`; a missing one raises ServiceNotInstalled saying so.

Mosquitto is configured from the shipped `deploy/mosquitto/mosquitto.conf` (only the listener,
persistence, allow_anonymous, user, pid_file and log_dest lines are replaced), so tests exercise
the production queue limits; Prometheus renders `deploy/prometheus/prometheus.yml` the same way.
Both files are read from the source tree: devstack runs from a checkout, not from a wheel.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_MOSQUITTO_CONF = REPO_ROOT / "deploy" / "mosquitto" / "mosquitto.conf"
SHIPPED_PROMETHEUS_YML = REPO_ROOT / "deploy" / "prometheus" / "prometheus.yml"
INSTALL_HINT = (
    "run `sudo scripts/install-system-deps.sh` "
    "(Debian packages mosquitto, prometheus, victoria-metrics)"
)
LOOPBACK = "127.0.0.1"
_LOG_TAIL_LINES = 40
_TARGETS_MARKER = "fleetgate:gateway-targets"
_RULES_MARKER = "fleetgate:rule-files"
SHIPPED_RULES_DIR = REPO_ROOT / "deploy" / "prometheus" / "rules"


def shipped_rule_files() -> tuple[Path, ...]:
    """The alert rules in deploy/prometheus/rules, without their promtool tests."""
    return tuple(sorted(p for p in SHIPPED_RULES_DIR.glob("*.yml")
                        if not p.name.endswith("_test.yml")))


class ServiceNotInstalled(RuntimeError):
    """The service's binary is not on this machine."""


class ServiceFailed(RuntimeError):
    """The service exited or did not become ready; the message ends with the tail of its log."""


def free_port() -> int:
    """A TCP port free on loopback right now (another process may still take it before use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_for(
    predicate: Callable[[], bool], timeout: float, interval: float = 0.05, what: str = ""
) -> None:
    """Poll `predicate` until it is true; raise TimeoutError(what) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(what or f"condition not met within {timeout:.1f} s")
        time.sleep(interval)


def _tcp_accepts(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


# Safety net: processes live in their own sessions, so a Python process that exits without
# stopping them (e.g. an interrupted test run) would leave them behind holding ports.
_LIVE: set[ManagedProcess] = set()


@atexit.register
def _stop_leftovers() -> None:
    for proc in list(_LIVE):
        with contextlib.suppress(Exception):
            proc.stop(timeout=5)


class ManagedProcess(ABC):
    """One service process: start, wait until ready, stop by PID. Subclasses say how."""

    name: str = "service"
    binary_names: tuple[str, ...] = ()  # absolute path first, then names looked up on PATH
    ready_timeout: float = 30.0

    def __init__(self, workdir: Path | str, port: int | None = None) -> None:
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port if port is not None else free_port()
        self.log_path = self.workdir / f"{self.name}.log"
        self.startup_seconds: float | None = None  # of the latest start(), for reports
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0  # where this run's output begins in the (appended) log

    # --- what subclasses provide
    @abstractmethod
    def _command(self, binary: str) -> list[str]:
        """The command line that runs the service."""

    def _prepare(self) -> None:  # noqa: B027 - optional hook, most services need no files
        """Write config files; called before every start."""

    @abstractmethod
    def _is_ready(self) -> bool:
        """True once the service answers."""

    def _env(self) -> dict[str, str] | None:
        """Environment of the child (None: inherit ours)."""
        return None

    # --- lifecycle
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def binary(self) -> str:
        for candidate in self.binary_names:
            if os.path.isabs(candidate):
                if os.access(candidate, os.X_OK):
                    return candidate
            elif found := shutil.which(candidate):
                return found
        raise ServiceNotInstalled(
            f"{self.name}: none of {', '.join(self.binary_names)} is installed; {INSTALL_HINT}"
        )

    def start(self, wait_ready: bool = True) -> Self:
        if self.is_running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        binary = self.binary()
        self._prepare()
        began = time.monotonic()
        # Appended across restarts; the child keeps its own copy of the descriptor.
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            self._proc = subprocess.Popen(
                self._command(binary),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self._env(),
            )
        _LIVE.add(self)
        if not wait_ready:
            return self
        try:
            self._await_ready(self._proc, began + self.ready_timeout)
        except BaseException:
            self.kill()  # also on Ctrl-C while waiting: never leave a half-started process
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def _await_ready(self, proc: subprocess.Popen[bytes], deadline: float) -> None:
        while not self._is_ready():
            code = proc.poll()
            if code is not None:
                raise ServiceFailed(
                    f"{self.name} exited with code {code} before it was ready "
                    f"(port {self.port}, workdir {self.workdir}). Log tail:\n{self.log_tail()}"
                )
            if time.monotonic() >= deadline:
                raise ServiceFailed(
                    f"{self.name} was not ready within {self.ready_timeout:.0f} s "
                    f"(port {self.port}, workdir {self.workdir}). Log tail:\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM (a clean shutdown: Mosquitto saves its database), SIGKILL after `timeout`."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        self._cleanup()

    def kill(self) -> None:
        """SIGKILL: an unclean death, as in a crash or OOM kill (nothing is saved)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        self._cleanup()

    def restart(self) -> Self:
        """Clean stop, then start on the same port with the same data dir."""
        self.stop()
        return self.start()

    def _cleanup(self) -> None:
        _LIVE.discard(self)

    def run_log(self) -> str:
        """Output of the latest run only (the log file is appended to across restarts)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        return "\n".join(self.run_log().splitlines()[-lines:]) or "(log is empty)"

    def __enter__(self) -> Self:
        if not self.is_running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.is_running else "stopped"
        return f"<{type(self).__name__} port={self.port} {state} workdir={self.workdir}>"


class _HttpService(ManagedProcess):
    """A service with an HTTP API on loopback."""

    ready_path = "/"
    # The address it listens on: loopback, or the root end of a test's veth pair (a gateway
    # run inside a network namespace reaches the service there).
    host: str = LOOPBACK

    def __init__(self, workdir: Path | str, port: int | None = None) -> None:
        super().__init__(workdir, port)
        self._http: httpx.Client | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def remote_write_url(self) -> str:
        return f"{self.url}/api/v1/write"

    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(base_url=self.url, timeout=10.0)
        return self._http

    def _is_ready(self) -> bool:
        try:
            return self.http.get(self.ready_path, timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False

    def _cleanup(self) -> None:
        # Pooled connections die with the process; a fresh client after restart avoids them.
        if self._http is not None:
            self._http.close()
            self._http = None
        super()._cleanup()

    def _api(self, path: str, params: dict[str, Any] | list[tuple[str, Any]]) -> Any:
        response = self.http.get(path, params=params)
        try:
            body = response.json()
        except ValueError:
            body = {"raw": response.text}
        if response.status_code != 200 or body.get("status") != "success":
            raise RuntimeError(f"{self.name} {path} {params!r} -> {response.status_code}: {body}")
        return body["data"]


class Mosquitto(ManagedProcess):
    name = "mosquitto"
    binary_names: tuple[str, ...] = ("/usr/sbin/mosquitto", "mosquitto")
    # Lines of the shipped config that only make sense on the production host.
    _DROPPED_KEYS = frozenset({"port", "bind_address", "user", "pid_file"})

    def __init__(
        self,
        workdir: Path | str,
        port: int | None = None,
        *,
        persistence: bool = True,
        extra_conf: str = "",
        shipped_conf: Path = SHIPPED_MOSQUITTO_CONF,
    ) -> None:
        super().__init__(workdir, port)
        self.persistence = persistence
        self.extra_conf = extra_conf
        self.shipped_conf = shipped_conf
        self.conf_path = self.workdir / "mosquitto.conf"
        self.data_dir = self.workdir / "mosquitto-data"

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def url(self) -> str:
        return f"mqtt://{LOOPBACK}:{self.port}"

    def render_conf(self) -> str:
        """The shipped config with this broker's listener, data dir and logging."""
        try:
            shipped = self.shipped_conf.read_text()
        except FileNotFoundError as e:
            raise ServiceFailed(
                f"shipped Mosquitto config {self.shipped_conf} is missing: devstack runs from "
                "a source checkout of fleetgate"
            ) from e
        # Keys set by extra_conf win over both the shipped file and the devstack overrides
        # (Mosquitto rejects a second value for string options); listener lines just add.
        extra_keys = {_conf_key(line) for line in self.extra_conf.splitlines()} - {None, "listener"}
        overrides = {
            "listener": f"listener {self.port} {LOOPBACK}",
            "persistence": f"persistence {'true' if self.persistence else 'false'}",
            "persistence_location": f"persistence_location {self.data_dir}",
            # Loopback only, and tests connect without credentials.
            "allow_anonymous": "allow_anonymous true",
            # stdout is block-buffered when redirected to a file; stderr is written line by
            # line, which the readiness check and ServiceFailed's log tail rely on.
            "log_dest": "log_dest stderr",
        }
        overrides = {k: v for k, v in overrides.items() if k not in extra_keys}
        out = [f"# Generated by devstack/stack.py from {self.shipped_conf}; do not edit."]
        written: set[str] = set()
        for line in shipped.splitlines():
            key = _conf_key(line)
            if key is None:
                out.append(line)
            elif key in overrides:
                # In place: a listener's scoped options that follow it keep applying to it.
                if key not in written:
                    out.append(overrides[key])
                    written.add(key)
            elif key not in extra_keys and key not in self._DROPPED_KEYS:
                out.append(line)
        out += ["", "# --- devstack"]
        out += [line for key, line in overrides.items() if key not in written]
        if os.geteuid() == 0:
            # As root Mosquitto drops to user "mosquitto", which cannot enter pytest's 0700
            # tmp dirs to write its database; stay root instead (a loopback-only test broker).
            out.append("user root")
        if self.extra_conf:
            out += ["", "# --- extra_conf", self.extra_conf]
        return "\n".join(out) + "\n"

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(self.render_conf())

    def _command(self, binary: str) -> list[str]:
        return [binary, "-c", str(self.conf_path)]

    def _is_ready(self) -> bool:
        # The log line proves the listener is this run's (not a stale process on the port).
        opened = f"listen socket on port {self.port}." in self.run_log()
        return opened and _tcp_accepts(self.port)


def _conf_key(line: str) -> str | None:
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    return stripped.split()[0]


class Prometheus(_HttpService):
    name = "prometheus"
    binary_names: tuple[str, ...] = ("/usr/bin/prometheus", "prometheus")
    ready_path = "/-/ready"

    def __init__(
        self,
        workdir: Path | str,
        port: int | None = None,
        *,
        out_of_order_window: str = "30m",
        extra_args: Sequence[str] = (),
        scrape_targets: Iterable[str] = (),
        shipped_yml: Path = SHIPPED_PROMETHEUS_YML,
        rule_files: Iterable[Path] = (),
        evaluation_interval: str | None = None,
    ) -> None:
        super().__init__(workdir, port)
        self.out_of_order_window = out_of_order_window
        self.rule_files = tuple(Path(p).resolve() for p in rule_files)
        self.evaluation_interval = evaluation_interval
        self.extra_args = tuple(extra_args)
        self.scrape_targets = tuple(scrape_targets)
        self.shipped_yml = shipped_yml
        self.config_path = self.workdir / "prometheus.yml"
        self.data_dir = self.workdir / "data"

    def render_config(self) -> str:
        """The shipped config with these scrape targets and out-of-order window."""
        try:
            text = self.shipped_yml.read_text()
        except FileNotFoundError as e:
            raise ServiceFailed(
                f"shipped Prometheus config {self.shipped_yml} is missing: devstack runs from "
                "a source checkout of fleetgate"
            ) from e
        text, n_window = re.subn(
            r"(?m)^(\s*out_of_order_time_window:)\s*\S+",
            rf"\g<1> {self.out_of_order_window}",
            text,
        )
        if self.evaluation_interval is not None:
            text = re.sub(r"(?m)^(\s*evaluation_interval:)\s*\S+",
                          rf"\g<1> {self.evaluation_interval}", text)
        lines = text.splitlines()
        n_targets = n_rules = 0
        for i, line in enumerate(lines):
            # A JSON list is a YAML flow sequence.
            if _TARGETS_MARKER in line:
                lines[i] = re.sub(r"\[.*\]", json.dumps(list(self.scrape_targets)), line)
                n_targets += 1
            elif _RULES_MARKER in line:
                lines[i] = re.sub(r"\[.*\]", json.dumps([str(p) for p in self.rule_files]),
                                  line)
                n_rules += 1
        if n_window != 1 or n_targets != 1 or n_rules != 1:
            raise ServiceFailed(
                f"{self.shipped_yml} must have one out_of_order_time_window line, one line "
                f"marked '{_TARGETS_MARKER}' and one marked '{_RULES_MARKER}' (found "
                f"{n_window}, {n_targets} and {n_rules})"
            )
        return "\n".join(lines) + "\n"

    def _prepare(self) -> None:
        self.config_path.write_text(self.render_config())

    def _command(self, binary: str) -> list[str]:
        return [
            binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.data_dir}",
            f"--web.listen-address={LOOPBACK}:{self.port}",
            "--web.enable-remote-write-receiver",
            "--web.enable-lifecycle",
            *self.extra_args,
        ]

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts, pending and firing, as /api/v1/alerts lists them."""
        return list(self._api("/api/v1/alerts", {})["alerts"])

    def ui_url(self, page: str, query: str = "") -> str:
        """The address of a page of Prometheus's web UI (`graph`, `alerts`, ...) that answers
        200 as it is. Upstream builds serve the pages at /<page>; Debian's package has only the
        classic UI, at /classic/<page> (its /alerts is a 404, its /graph redirects there)."""
        suffix = f"?{query}" if query else ""
        candidates = [f"/{page}", f"/classic/{page}"]
        for path in candidates:
            try:
                if self.http.get(path, timeout=5.0).status_code == 200:
                    return f"{self.url}{path}{suffix}"
            except httpx.TransportError:
                break
        return f"{self.url}{candidates[0]}{suffix}"

    def query(self, promql: str, time: float | None = None) -> list[dict[str, Any]]:
        """Instant query; the result vector."""
        params: dict[str, Any] = {"query": promql}
        if time is not None:
            params["time"] = time
        return _as_list(self._api("/api/v1/query", params))

    def query_range(
        self, promql: str, start: float, end: float, step: float = 15.0
    ) -> list[dict[str, Any]]:
        """Range query; the result matrix (one dict per series, with "values")."""
        params = {"query": promql, "start": start, "end": end, "step": step}
        return _as_list(self._api("/api/v1/query_range", params))

    def series(
        self, match: str, start: float | None = None, end: float | None = None
    ) -> list[dict[str, Any]]:
        """Label sets of the series matching `match` (default window: Prometheus's)."""
        params: list[tuple[str, Any]] = [("match[]", match)]
        if start is not None:
            params.append(("start", start))
        if end is not None:
            params.append(("end", end))
        return list(self._api("/api/v1/series", params))


class VictoriaMetrics(_HttpService):
    name = "victoria-metrics"
    binary_names: tuple[str, ...] = ("/usr/bin/victoria-metrics", "victoria-metrics")
    ready_path = "/health"

    def __init__(
        self, workdir: Path | str, port: int | None = None, *, extra_args: Sequence[str] = (),
        host: str = LOOPBACK,
    ) -> None:
        super().__init__(workdir, port)
        self.host = host
        self.extra_args = tuple(extra_args)
        self.data_dir = self.workdir / "vm"

    def _command(self, binary: str) -> list[str]:
        return [
            binary,
            f"-httpListenAddr={self.host}:{self.port}",
            f"-storageDataPath={self.data_dir}",
            # Keeps test samples with timestamps years in the past (the default is 1 month).
            "-retentionPeriod=100y",
            # Tests read right after writing: no response cache, no "too fresh" cut-off.
            "-search.disableCache",
            "-search.latencyOffset=0s",
            *self.extra_args,
        ]

    def force_flush(self) -> None:
        """Make every ingested sample searchable (VictoriaMetrics buffers them for ~1 s)."""
        self.http.get("/internal/force_flush").raise_for_status()

    def export(
        self, match: str, start: float | None = None, end: float | None = None
    ) -> list[dict[str, Any]]:
        """Raw samples of matching series: [{"metric": {...}, "values": [...],
        "timestamps": [ms, ...]}, ...]. All time by default."""
        self.force_flush()
        # VictoriaMetrics' default end leaves out samples written in the current second, and
        # it refuses samples more than 2 days ahead, so this end covers everything stored.
        default_end = time.time() + 3 * 86400
        params: list[tuple[str, Any]] = [
            ("match[]", match),
            ("start", 0 if start is None else start),
            ("end", default_end if end is None else end),
        ]
        response = self.http.get("/api/v1/export", params=params)
        if response.status_code != 200:
            raise RuntimeError(
                f"{self.name} export {match!r} -> {response.status_code}: {response.text}"
            )
        return [json.loads(line) for line in response.text.splitlines() if line.strip()]

    def query(self, promql: str, time: float | None = None) -> list[dict[str, Any]]:
        """Instant query (after force_flush); the result vector."""
        self.force_flush()
        params: dict[str, Any] = {"query": promql, "nocache": 1}
        if time is not None:
            params["time"] = time
        return _as_list(self._api("/api/v1/query", params))


class GatewayProcess(_HttpService):
    """`fleetgate run` as a child process, configured only through FLEETGATE_* variables.

    Ready when /readyz answers 200 (broker connected, database writable); pass
    `wait_ready=False` to start() for scenarios where the broker is meant to be away.
    """

    name = "fleetgate"
    binary_names = (sys.executable,)
    ready_path = "/readyz"
    ready_timeout = 60.0

    def __init__(self, workdir: Path | str, *, mqtt_url: str,
                 remote_write_urls: Sequence[str] = (), port: int | None = None,
                 settings: dict[str, str] | None = None, api_host: str = LOOPBACK,
                 command_prefix: Sequence[str] = ()) -> None:
        super().__init__(workdir, port)
        self.mqtt_url = mqtt_url
        self.remote_write_urls = list(remote_write_urls)
        self.settings = dict(settings or {})
        self.data_dir = self.workdir / "data"
        self.host = api_host
        # e.g. ("ip", "netns", "exec", NS): it execs the gateway, so the PID stays the gateway's
        self.command_prefix = tuple(command_prefix)

    def _command(self, binary: str) -> list[str]:
        return [*self.command_prefix, binary, "-m", "gateway.cli", "run"]

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGATE_")}
        env.update({
            "FLEETGATE_MQTT_URL": self.mqtt_url,
            "FLEETGATE_DATA_DIR": str(self.data_dir),
            "FLEETGATE_REMOTE_WRITE_URL": ",".join(self.remote_write_urls),
            "FLEETGATE_API_LISTEN": f"{self.host}:{self.port}",
            "PYTHONUNBUFFERED": "1",
        })
        env.update({f"FLEETGATE_{k.upper()}": v for k, v in self.settings.items()})
        return env

    def auth_headers(self) -> dict[str, str]:
        """A bearer header with the first of its api_tokens, if it has any."""
        tokens = self.settings.get("api_tokens", "")
        token = tokens.split(",")[0].rpartition(":")[0].strip()
        return {"Authorization": f"Bearer {token}"} if token else {}

    def pipeline(self) -> dict[str, Any]:
        return self.http.get("/api/v1/pipeline",
                             headers=self.auth_headers()).raise_for_status().json()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples matching labels, from /metrics (0 when absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        total = 0.0
        text = self.http.get("/metrics").raise_for_status().text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v
                                               for k, v in labels.items()):
                    total += sample.value
        return total

    def caught_up(self) -> bool:
        """Every endpoint has taken every committed frame."""
        try:
            state = self.pipeline()
        except httpx.TransportError:
            return False
        return all(e["cursor"] >= state["committed_upto"] for e in state["endpoints"])


def _as_list(data: dict[str, Any]) -> list[dict[str, Any]]:
    result = data.get("result")
    if not isinstance(result, list):
        raise RuntimeError(f"expected a vector or matrix, got {data.get('resultType')}: {result}")
    return result
