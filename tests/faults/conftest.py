"""Fault-matrix fixtures.

FAULTS_LONG=1 (set by `make faults`) runs the long versions of the scenarios.

Every scenario reports its accounting through the `fault_report` fixture: frames in, samples
out, lost, doubled (and the resend at a kill as its own figure). With FAULTS_REPORT=<path>
(`make faults` sets docs/reliability.md) the rows of the run replace the generated table in that
file; without it they are only printed at the end of the session.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import tests.support.fault_matrix as fault_matrix

LONG_RUN_TIMEOUT_S = 1800  # the 10-minute outage and the 20 kills take longer than 300 s


def _long() -> bool:
    return os.environ.get("FAULTS_LONG", "") not in ("", "0")


@pytest.fixture
def long_run() -> bool:
    return _long()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if _long():
        for item in items:
            if "/faults/" in str(item.path):
                item.add_marker(pytest.mark.timeout(LONG_RUN_TIMEOUT_S))


@dataclass
class FaultReport:
    """One scenario's accounting; the fixture stamps its duration and outcome."""

    scenario: str
    long: bool
    started: float = field(default_factory=time.monotonic)
    rows: list[fault_matrix.Row] = field(default_factory=list)

    def record(self, *, frames_in: int, samples_in: int, samples_out: int, lost: int,
               doubled: int, resent: int = 0, receiver: str = "VictoriaMetrics",
               note: str = "") -> None:
        """samples_out counts distinct samples the receiver holds; doubled, extra copies
        beyond one that are not explained by a kill's resend; resent, those that are."""
        self.rows.append(fault_matrix.Row(
            scenario=self.scenario, mode="long" if self.long else "short", receiver=receiver,
            frames_in=frames_in, samples_in=samples_in, samples_out=samples_out, lost=lost,
            doubled=doubled, resent=resent, duration_s=0.0, passed=False, note=note))


_collected: list[fault_matrix.Row] = []


@pytest.fixture
def fault_report(request: pytest.FixtureRequest, long_run: bool) -> Iterator[FaultReport]:
    doc = request.node.function.__doc__ or request.node.name
    report = FaultReport(scenario=doc.strip().splitlines()[0].rstrip("."), long=long_run)
    yield report
    duration = time.monotonic() - report.started
    call = getattr(request.node, "rep_call", None)
    passed = bool(call and call.passed)
    for row in report.rows:
        row.duration_s = duration
        row.passed = passed
        _collected.append(row)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item.rep_call = rep  # type: ignore[attr-defined]


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not _collected:
        return
    table = fault_matrix.markdown_table(_collected)
    print("\n\nFault matrix\n" + table)
    target = os.environ.get("FAULTS_REPORT")
    if target:
        fault_matrix.write_section(Path(target), _collected)
