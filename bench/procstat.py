"""CPU time and peak memory of other processes, read from /proc, and what machine this is."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class CpuSample:
    pid: int
    seconds: float  # user + system time of every thread so far


def cpu(pid: int) -> CpuSample:
    """utime + stime of a live process (all threads), in seconds; resolution 1/CLK_TCK."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may contain spaces; fields after it are fixed.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return CpuSample(pid, (utime + stime) / _TICKS_PER_S)


def cpu_since(before: CpuSample) -> float:
    return cpu(before.pid).seconds - before.seconds


def steal_seconds() -> float:
    """CPU time the hypervisor gave to others while we wanted it, all CPUs (proc(5) "steal")."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    return int(fields[8]) / _TICKS_PER_S


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the resident set's high-water mark since the process started."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def machine() -> dict[str, str]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    return {
        "cpus": str(os.cpu_count()),
        "cpu_model": model,
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "kernel": os.uname().release,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _git_commit(),
    }


def _git_commit() -> str:
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, check=True,
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", ".", ":!bench"],
                               cwd=repo, check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    changed = sorted(line[3:] for line in dirty.splitlines() if line.strip())
    if not changed:
        return head
    more = f" and {len(changed) - 12} more" if len(changed) > 12 else ""
    shown = ", ".join(changed[:12]) + more
    return f"{head} + uncommitted changes to {shown}"
