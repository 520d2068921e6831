"""`fleetgate demo` (what `make demo` runs) starts the whole stack; data reaches Prometheus."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_demo_runs_the_stack_and_fills_prometheus(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "demo", "--workdir", str(tmp_path / "demo"),
         "--devices", "3", "--interval", "1", "--duration", "8"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Prometheus graph      http://127.0.0.1:" in result.stdout
    assert "/docs" in result.stdout
    assert "demo check: 3 devices" in result.stdout
    assert "fleetgate demo stopped." in result.stdout
