"""What devstack reads from the source tree: the shipped configs and rules under deploy/.

devstack runs from a checkout, not from a wheel: these paths are relative to the repository.
"""

from __future__ import annotations

from pathlib import Path

from devstack.process import ServiceFailed

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_MOSQUITTO_CONF = REPO_ROOT / "deploy" / "mosquitto" / "mosquitto.conf"
SHIPPED_PROMETHEUS_YML = REPO_ROOT / "deploy" / "prometheus" / "prometheus.yml"
SHIPPED_RULES_DIR = REPO_ROOT / "deploy" / "prometheus" / "rules"


def read_shipped(path: Path, what: str) -> str:
    """The text of a shipped config file; ServiceFailed naming it if it is missing."""
    try:
        return path.read_text()
    except FileNotFoundError as e:
        raise ServiceFailed(
            f"shipped {what} {path} is missing: devstack runs from a source checkout of fleetgate"
        ) from e


def shipped_rule_files() -> tuple[Path, ...]:
    """The alert rules in deploy/prometheus/rules, without their promtool tests."""
    return tuple(sorted(p for p in SHIPPED_RULES_DIR.glob("*.yml")
                        if not p.name.endswith("_test.yml")))
