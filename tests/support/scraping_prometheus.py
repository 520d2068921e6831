"""A Prometheus that scrapes exporters every second, for comparing a scrape with fleetgate.

devstack.Prometheus renders deploy/prometheus/prometheus.yml, whose only scrape job is the
gateway's /metrics every 5 s. It takes another file in that shape (`shipped_yml`), so this
module writes one with a 1 s scrape interval and a job named `job` for the given targets,
instead of adding a scrape-interval option to devstack.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from devstack import Prometheus

_CONFIG = """\
global:
  scrape_interval: {interval}
  evaluation_interval: {interval}
storage:
  tsdb:
    out_of_order_time_window: 30m
rule_files: [] # fleetgate:rule-files
scrape_configs:
  - job_name: {job}
    metrics_path: /metrics
    static_configs:
      - targets: {targets} # fleetgate:gateway-targets
"""


def scraping_prometheus(workdir: Path, targets: Sequence[str], *, job: str = "exporter",
                        interval: str = "1s") -> Prometheus:
    """A (not yet started) Prometheus scraping `targets` ("host:port") every `interval`."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "scrape.yml"
    config.write_text(_CONFIG.format(interval=interval, job=json.dumps(job),
                                     targets=json.dumps(list(targets))))
    return Prometheus(workdir / "prometheus", scrape_targets=targets, shipped_yml=config)
