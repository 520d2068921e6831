"""Profile a gateway process over the benchmark's workload: py-spy stacks plus GC time.

py-spy (`.venv/bin/pip install py-spy`, not a project dependency) samples Python stacks of
every thread; bench/gcstats/sitecustomize.py, put on the gateway's PYTHONPATH, times the
garbage collector, which a Python-level sampler cannot see.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

GCSTATS_DIR = Path(__file__).resolve().parent / "gcstats"
SAMPLE_RATE_HZ = 200


class ProfilerError(RuntimeError):
    """py-spy or the GC probe did not deliver."""


@dataclass(frozen=True, slots=True)
class GcTime:
    seconds: tuple[float, float, float]  # per generation, over the profiled window
    collections: tuple[int, int, int]
    threshold: tuple[int, ...]

    @property
    def total_s(self) -> float:
        return sum(self.seconds)


@contextlib.contextmanager
def gcstats_environment(stats_out: Path) -> Iterator[None]:
    """os.environ for a child started inside: bench/gcstats on its PYTHONPATH, writing its GC
    totals to stats_out on SIGUSR1."""
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "BENCH_GCSTATS_OUT")}
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(GCSTATS_DIR), saved["PYTHONPATH"]) if p)
    os.environ["BENCH_GCSTATS_OUT"] = str(stats_out)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def pyspy_binary() -> str:
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if not found:
        raise ProfilerError("profiling needs py-spy: .venv/bin/pip install py-spy")
    return found


def pyspy_command(pid: int, out: Path) -> list[str]:
    # Raw (collapsed) stacks per thread. --nonblocking: never pause the gateway (pausing
    # also defeats py-spy's idle detection).
    return [pyspy_binary(), "record", "--pid", str(pid), "--format", "raw", "--threads",
            "--rate", str(SAMPLE_RATE_HZ), "--nonblocking", "-o", str(out)]


class GatewayProfiler:
    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.raw = workdir / "profile-gateway.txt"
        self._gc_file = workdir / "gcstats.jsonl"
        self._spy: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None

    def environment(self) -> AbstractContextManager[None]:
        """Around the gateway's start: it inherits the GC probe through its environment."""
        return gcstats_environment(self._gc_file)

    def start(self, pid: int) -> None:
        pyspy_binary()  # fail before the workload, not after
        self._pid = pid
        self._gc_snapshot(1)
        self._spy = subprocess.Popen(pyspy_command(pid, self.raw), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)

    def stop(self) -> None:
        if self._pid is not None:
            self._gc_snapshot(2)
        spy, self._spy = self._spy, None
        if spy is None:
            return
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        try:
            _, err = spy.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.communicate()
            raise ProfilerError("py-spy did not finish writing its profile") from None
        if spy.returncode not in (0, -signal.SIGINT) or not self.raw.exists():
            raise ProfilerError(f"py-spy failed ({spy.returncode}): "
                                f"{err.decode(errors='replace')[-2000:]}")

    def gc_time(self) -> GcTime:
        first, second = (json.loads(line) for line in self._gc_file.read_text().splitlines())
        return GcTime(
            seconds=tuple(b - a for a, b in zip(first["seconds"], second["seconds"],
                                                strict=True)),  # type: ignore[arg-type]
            collections=tuple(b - a for a, b in zip(first["collections"],
                                                    second["collections"],
                                                    strict=True)),  # type: ignore[arg-type]
            threshold=tuple(first["threshold"]))

    def _gc_snapshot(self, lines: int) -> None:
        assert self._pid is not None
        os.kill(self._pid, signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while not (self._gc_file.exists()
                   and len(self._gc_file.read_text().splitlines()) >= lines):
            if time.monotonic() > deadline:
                raise ProfilerError(f"the gateway wrote no GC snapshot to {self._gc_file}: "
                                    f"is {GCSTATS_DIR} on its PYTHONPATH?")
            time.sleep(0.02)


def gc_markdown(gc: GcTime, gateway_cpu_s: float) -> str:
    share = 100 * gc.total_s / gateway_cpu_s if gateway_cpu_s else 0.0
    per_gen = ", ".join(f"gen{g} {s:.2f} s in {n:,} collections"
                        for g, (s, n) in enumerate(zip(gc.seconds, gc.collections, strict=True)))
    return (f"**Garbage collection: {gc.total_s:.2f} s of the gateway's {gateway_cpu_s:.2f} s "
            f"of CPU over the workload = {share:.0f}%** ({per_gen}; thresholds "
            f"{gc.threshold}), timed with gc.callbacks by `bench/gcstats/sitecustomize.py` in "
            "the same run. py-spy cannot see the collector: its time is inside the samples "
            "below, on the lines whose allocations triggered it.")
