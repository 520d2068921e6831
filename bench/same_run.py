"""Two variants of the gateway measured in one run, alternating which goes first.

A variant is the gateway started by bench/gateway_launcher.py on a chosen SQLite layer
(`throughput.py --sqlite-layers`, bench/layer_compare.py) or from a chosen source tree
(`throughput.py` / `drain.py --gateway-trees`, bench/tree_compare.py). In each repeat both
variants run every case back to back; which one goes first alternates from one repeat to the
next, so that a drift of the shared machine during a repeat does not always favour the same
one. A run that fails is run once more (a VictoriaMetrics query timing out on the loaded
machine once lost a whole 4-repeat run). Two back-to-back runs differ by up to ±20% on this
machine, so the figures that count are the per-repeat ratios subject / baseline: their median,
spread, and mean with its standard error.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import results_file
from gateway_launcher import PROVENANCE_PREFIX

from devstack import GatewayProcess, ServiceFailed

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RUN_RETRIES = 1
FAILURES: tuple[type[Exception], ...] = (RuntimeError, TimeoutError, httpx.HTTPError)
Runs = dict[str, list[dict[str, Any]]]  # per variant, one result per repeat


class LaunchedGateway(GatewayProcess):
    """The gateway started by bench/gateway_launcher.py in `mode`, importing its `gateway`
    from `tree` (PYTHONPATH; default this checkout); start() checks the launcher's provenance
    line: the packages came from that tree, none of their modules from elsewhere."""

    def __init__(self, *args: Any, mode: str, tree: Path = REPO_ROOT, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mode = mode
        self.tree = tree.resolve()
        self.provenance: dict[str, Any] = {}

    def _command(self, binary: str) -> list[str]:
        return [*self.command_prefix, binary, str(BENCH_DIR / "gateway_launcher.py"),
                self.mode, "run"]

    def _env(self) -> dict[str, str]:
        env = super()._env()
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self.tree),
                                                        env.get("PYTHONPATH")) if p)
        return env

    def start(self, wait_ready: bool = True) -> LaunchedGateway:
        super().start(wait_ready)
        lines = [line for line in self.run_log().splitlines()
                 if line.startswith(PROVENANCE_PREFIX)]
        if not lines:
            return self  # not ready yet (wait_ready=False): nothing printed to check
        self.provenance = json.loads(lines[0].removeprefix(PROVENANCE_PREFIX))
        wanted = {name: str(self.tree / name) for name in ("gateway", "device_protocol")}
        if any(self.provenance[k] != v for k, v in wanted.items()) or self.provenance["foreign"]:
            self.kill()
            raise ServiceFailed(f"gateway from the wrong tree: wanted {wanted}, the launcher "
                                f"says {self.provenance}")
        self.provenance["tree_state"] = tree_state(self.tree)
        return self


def tree_state(tree: Path) -> str:
    """The tree's commit, and its files of the gateway's packages changed since (another
    engineer may be editing the working tree while a comparison runs)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tree), *args], check=True,
                              capture_output=True, text=True).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--", "gateway", "device_protocol", "migrations")
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    files = sorted(line[3:] for line in changed.splitlines())
    return head + (f" + uncommitted changes to {', '.join(files)}" if files else " (clean)")


def provenance(gw: GatewayProcess) -> dict[str, str]:
    """For a run's result: the directory its gateway package came from, if launched here."""
    if not isinstance(gw, LaunchedGateway):
        return {}
    return {"gateway_from": f"{gw.provenance['gateway']} at {gw.provenance['tree_state']}"}


@dataclass(frozen=True)
class Variant:
    name: str
    mode: str = "as-is"  # gateway_launcher.py's
    tree: Path = REPO_ROOT

    def gateway(self, workdir: Path, **options: Any) -> LaunchedGateway:
        return LaunchedGateway(workdir, mode=self.mode, tree=self.tree, **options)


@dataclass(frozen=True)
class Comparison:
    """baseline and subject; `first` runs first in repeat 1 (then they alternate)."""

    baseline: Variant
    subject: Variant
    first: str

    @property
    def names(self) -> tuple[str, str]:
        return self.baseline.name, self.subject.name

    def order(self, repeat: int) -> tuple[Variant, Variant]:
        """The variants in the order repeat number `repeat` (from 0) runs them."""
        pair = ((self.baseline, self.subject) if self.first == self.baseline.name
                else (self.subject, self.baseline))
        return pair if repeat % 2 == 0 else (pair[1], pair[0])


def alternate(comparison: Comparison, repeat: int, cases: Sequence[str],
              run: Callable[[int, str, Variant, int], dict[str, Any]],
              on_pair: Callable[[str, Runs], None]) -> list[Runs]:
    """run(repeat, case, variant, attempt) for every repeat, case and variant in turn;
    on_pair(case, runs) after both variants of a case. Per case, the runs of each variant."""
    results: list[Runs] = [{name: [] for name in comparison.names} for _ in cases]
    for i in range(repeat):
        for case, runs in zip(cases, results, strict=True):
            for variant in comparison.order(i):
                for attempt in range(1 + RUN_RETRIES):
                    print(f"run {i + 1}/{repeat}, {case}: gateway {variant.name} ...",
                          flush=True)
                    try:
                        runs[variant.name].append(run(i, case, variant, attempt))
                        break
                    except FAILURES as exc:
                        if attempt == RUN_RETRIES:
                            raise
                        print(f"  failed ({exc!r}); once more", flush=True)
            on_pair(case, runs)
    return results


def measure(comparison: Comparison, repeat: int, cases: Sequence[str],
            run: Callable[[int, str, Variant, int], dict[str, Any]],
            on_pair: Callable[[str, Runs], None], remove: Path | None) -> list[Runs] | None:
    """alternate(), then `remove` (the bench's temporary dir) whatever happened; None (said
    on stderr) if a run failed twice."""
    try:
        return alternate(comparison, repeat, cases, run, on_pair)
    except FAILURES as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return None
    finally:
        if remove is not None:
            shutil.rmtree(remove, ignore_errors=True)


def report(results_path: Path, section: str, text: str, found: Sequence[str]) -> int:
    """Print the section, write it into RESULTS.md, print the failed output checks; the exit
    code (1 if a check failed)."""
    print(text)
    results_file.write_section(results_path, section, text)
    print(f"wrote section {section!r} of {results_path}")
    for problem in found:
        print(f"CHECK FAILED: {problem}", file=sys.stderr)
    return 1 if found else 0


# ---------------------------------------------------------------------------- figures
@dataclass(frozen=True)
class Figure:
    key: str  # in each run's result
    label: str
    unit: str  # "" for none
    digits: int
    lower_is_better: bool

    def text(self, value: float) -> str:
        return f"{value:,.{self.digits}f}"

    def with_unit(self, value: float) -> str:
        return self.text(value) + (f" {self.unit}" if self.unit else "")


def ratios(comparison: Comparison, runs: Runs, figure: Figure) -> list[float]:
    """subject / baseline of each repeat (the two ran back to back)."""
    base, subject = (runs[name] for name in comparison.names)
    return [float(s[figure.key]) / float(b[figure.key])
            for b, s in zip(base, subject, strict=True)]


# Student's t, two-sided 95%, by degrees of freedom (1..10); beyond that 2.0 is close enough.
_T95 = (12.71, 4.30, 3.18, 2.78, 2.57, 2.45, 2.36, 2.31, 2.26, 2.23)


def interval(paired: Sequence[float]) -> tuple[float, float]:
    """95% confidence interval of the mean of per-repeat ratios (two or more)."""
    mean = statistics.mean(paired)
    df = len(paired) - 1
    half = (_T95[df - 1] if df <= len(_T95) else 2.0) * statistics.stdev(paired) / math.sqrt(
        len(paired))
    return mean - half, mean + half


def spread(paired: Sequence[float]) -> str:
    """Median, range, mean and its 95% interval of per-repeat ratios."""
    text = f"median {statistics.median(paired):.3f}, from {min(paired):.3f} to {max(paired):.3f}"
    if len(paired) > 1:
        low, high = interval(paired)
        text += f", mean {statistics.mean(paired):.3f} (95% interval {low:.3f} to {high:.3f})"
    return text


def noise_verdict(paired: Sequence[float], figure: Figure) -> str:
    """Worse or better than the baseline beyond the noise: the 95% interval of the mean
    per-repeat ratio lies wholly on one side of 1."""
    if len(paired) < 2:
        return "one repeat: no spread to judge it by"
    low, high = interval(paired)
    worse, better = (low > 1, high < 1) if figure.lower_is_better else (high < 1, low > 1)
    if worse:
        return "**worse beyond the noise** (the 95% interval lies wholly on the worse side of 1)"
    if better:
        return "**better beyond the noise** (the 95% interval lies wholly on the better side of 1)"
    return "**within the noise** (the 95% interval contains 1)"


def case_table(comparison: Comparison, runs: Runs, figures: Sequence[Figure]) -> list[str]:
    """Per repeat: who went first, each figure for both variants and their ratio."""
    base, subject = comparison.names
    head = "| repeat | first |"
    for f in figures:
        unit = f" {f.unit}" if f.unit else ""
        head += f" {base} {f.label}{unit} | {subject} {f.label}{unit} | {subject} / {base} |"
    lines = [head, "|---:|---|" + "---:|" * 3 * len(figures)]
    for i, (b, s) in enumerate(zip(runs[base], runs[subject], strict=True)):
        row = f"| {i + 1} | {comparison.order(i)[0].name} |"
        for f in figures:
            row += (f" {f.text(b[f.key])} | {f.text(s[f.key])} | "
                    f"{float(s[f.key]) / float(b[f.key]):.3f} |")
        lines.append(row)
    return lines


def figure_line(comparison: Comparison, runs: Runs, figure: Figure) -> str:
    """Medians of both variants, their ratio, the per-repeat ratios and the verdict."""
    base, subject = comparison.names
    b, s = (statistics.median(float(r[figure.key]) for r in runs[n]) for n in (base, subject))
    paired = ratios(comparison, runs, figure)
    return (f"{figure.label}: medians {base} **{figure.with_unit(b)}**, {subject} "
            f"**{figure.with_unit(s)}**: ratio {s / b:.3f} (per-repeat {subject} / {base}: "
            f"{spread(paired)}): {noise_verdict(paired, figure)}.")


def pooled_line(comparison: Comparison, results: Sequence[Runs], figure: Figure) -> str:
    paired = [r for runs in results for r in ratios(comparison, runs, figure)]
    return (f"{figure.label}, all {len(paired)} per-repeat ratios: {spread(paired)}: "
            f"{noise_verdict(paired, figure)}.")


def console_line(comparison: Comparison, case: str, runs: Runs, figure: Figure) -> str:
    last = {name: float(runs[name][-1][figure.key]) for name in comparison.names}
    base, subject = comparison.names
    return (f"{case} {figure.label}: {base} {figure.with_unit(last[base])}, {subject} "
            f"{figure.with_unit(last[subject])} ({last[subject] / last[base]:.3f}x)")


def imported_from(runs: Runs, name: str) -> str:
    """Where the gateway of variant `name` came from in its runs, as its launcher said."""
    return ", ".join(f"`{d}`" for d in sorted({str(r.get("gateway_from")) for r in runs[name]}))


def problems(runs: Runs, check: Callable[[dict[str, Any]], list[str]]) -> list[str]:
    return [f"{name} run {i}: {p}" for name, rs in runs.items()
            for i, run in enumerate(rs, 1) for p in check(run)]
