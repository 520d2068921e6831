"""One service process: start it in a session of its own, wait until it is ready, stop it by PID.

A process is started in a new session and stopped by its PID only: stopping one never touches
another test's processes. Binaries come from `scripts/install-system-deps.sh`; a missing one
raises ServiceNotInstalled saying so.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import Self

from devstack.ports import free_port

_LOG_TAIL_LINES = 40
INSTALL_HINT = (
    "run `sudo scripts/install-system-deps.sh` "
    "(Debian packages mosquitto, prometheus, victoria-metrics)"
)


class ServiceNotInstalled(RuntimeError):
    """The service's binary is not on this machine."""


class ServiceFailed(RuntimeError):
    """The service exited or did not become ready; the message ends with the tail of its log."""


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

    @property
    def returncode(self) -> int | None:
        """The exit code of the latest run once it has ended (negative: killed by that signal)."""
        return self._proc.poll() if self._proc is not None else None

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
