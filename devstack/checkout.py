"""What devstack reads from the source tree: the shipped configs and rules under deploy/.

devstack runs from a checkout, not from a wheel: these paths are relative to the repository.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_MOSQUITTO_CONF = REPO_ROOT / "deploy" / "mosquitto" / "mosquitto.conf"
SHIPPED_PROMETHEUS_YML = REPO_ROOT / "deploy" / "prometheus" / "prometheus.yml"
SHIPPED_RULES_DIR = REPO_ROOT / "deploy" / "prometheus" / "rules"
INSTALL_HINT = (
    "run `sudo scripts/install-system-deps.sh` "
    "(Debian packages mosquitto, prometheus, victoria-metrics)"
)


def shipped_rule_files() -> tuple[Path, ...]:
    """The alert rules in deploy/prometheus/rules, without their promtool tests."""
    return tuple(sorted(p for p in SHIPPED_RULES_DIR.glob("*.yml")
                        if not p.name.endswith("_test.yml")))
