"""The alert rules in deploy/prometheus/rules, checked and unit-tested by Prometheus's promtool."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.tools import promtool

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "rules"


@pytest.mark.parametrize("rules", sorted(p.name for p in RULES.glob("*.yml")
                                         if not p.name.endswith("_test.yml")))
def test_rules_are_valid_and_their_unit_tests_pass(rules: str) -> None:
    tool = promtool()
    checked = subprocess.run([tool, "check", "rules", rules], cwd=RULES, capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tests = rules.removesuffix(".yml") + "_test.yml"
    assert (RULES / tests).is_file(), f"{rules} has no {tests}"
    tested = subprocess.run([tool, "test", "rules", tests], cwd=RULES, capture_output=True,
                            text=True, timeout=60)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout
