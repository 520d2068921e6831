"""The model-based test says how much it checked, in the terminal summary and in
var/model-runs.log (docs/reliability.md quotes it)."""

from __future__ import annotations

from typing import Any

from .checks import STATS


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if STATS["histories"]:
        terminalreporter.write_line(
            "model-based test: " + ", ".join(f"{v} {k}" for k, v in sorted(STATS.items())))
