"""Prometheus rendered from the shipped `deploy/prometheus/prometheus.yml`.

The file's scrape targets, rule files and out-of-order window are filled in (lines marked
`fleetgate:gateway-targets` and `fleetgate:rule-files`); the remote-write receiver is on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import httpx

from devstack.checkout import SHIPPED_PROMETHEUS_YML, read_shipped
from devstack.http_service import HttpService
from devstack.ports import LOOPBACK
from devstack.process import ServiceFailed

_TARGETS_MARKER = "fleetgate:gateway-targets"
_RULES_MARKER = "fleetgate:rule-files"


class Prometheus(HttpService):
    name = "prometheus"
    binary_names: tuple[str, ...] = ("/usr/bin/prometheus", "prometheus")
    ready_path = "/-/ready"

    def __init__(
        self,
        workdir: Path | str,
        port: int | None = None,
        *,
        out_of_order_window: str = "30m",
        extra_args: Sequence[str] = (),
        scrape_targets: Iterable[str] = (),
        shipped_yml: Path = SHIPPED_PROMETHEUS_YML,
        rule_files: Iterable[Path] = (),
        evaluation_interval: str | None = None,
    ) -> None:
        super().__init__(workdir, port)
        self.out_of_order_window = out_of_order_window
        self.rule_files = tuple(Path(p).resolve() for p in rule_files)
        self.evaluation_interval = evaluation_interval
        self.extra_args = tuple(extra_args)
        self.scrape_targets = tuple(scrape_targets)
        self.shipped_yml = shipped_yml
        self.config_path = self.workdir / "prometheus.yml"
        self.data_dir = self.workdir / "data"

    def render_config(self) -> str:
        """The shipped config with these scrape targets and out-of-order window."""
        text = read_shipped(self.shipped_yml, "Prometheus config")
        text, n_window = re.subn(
            r"(?m)^(\s*out_of_order_time_window:)\s*\S+",
            rf"\g<1> {self.out_of_order_window}",
            text,
        )
        if self.evaluation_interval is not None:
            text = re.sub(r"(?m)^(\s*evaluation_interval:)\s*\S+",
                          rf"\g<1> {self.evaluation_interval}", text)
        lines = text.splitlines()
        n_targets = n_rules = 0
        for i, line in enumerate(lines):
            # A JSON list is a YAML flow sequence.
            if _TARGETS_MARKER in line:
                lines[i] = re.sub(r"\[.*\]", json.dumps(list(self.scrape_targets)), line)
                n_targets += 1
            elif _RULES_MARKER in line:
                lines[i] = re.sub(r"\[.*\]", json.dumps([str(p) for p in self.rule_files]),
                                  line)
                n_rules += 1
        if n_window != 1 or n_targets != 1 or n_rules != 1:
            raise ServiceFailed(
                f"{self.shipped_yml} must have one out_of_order_time_window line, one line "
                f"marked '{_TARGETS_MARKER}' and one marked '{_RULES_MARKER}' (found "
                f"{n_window}, {n_targets} and {n_rules})"
            )
        return "\n".join(lines) + "\n"

    def _prepare(self) -> None:
        self.config_path.write_text(self.render_config())

    def _command(self, binary: str) -> list[str]:
        return [
            binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.data_dir}",
            f"--web.listen-address={LOOPBACK}:{self.port}",
            "--web.enable-remote-write-receiver",
            "--web.enable-lifecycle",
            *self.extra_args,
        ]

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts, pending and firing, as /api/v1/alerts lists them."""
        return list(self._api("/api/v1/alerts", {})["alerts"])

    def ui_url(self, page: str, query: str = "") -> str:
        """The address of a page of Prometheus's web UI (`graph`, `alerts`, ...) that answers
        200 as it is. Upstream builds serve the pages at /<page>; Debian's package has only the
        classic UI, at /classic/<page> (its /alerts is a 404, its /graph redirects there)."""
        suffix = f"?{query}" if query else ""
        candidates = [f"/{page}", f"/classic/{page}"]
        for path in candidates:
            try:
                if self.http.get(path, timeout=5.0).status_code == 200:
                    return f"{self.url}{path}{suffix}"
            except httpx.TransportError:
                break
        return f"{self.url}{candidates[0]}{suffix}"

    def query(self, promql: str, time: float | None = None) -> list[dict[str, Any]]:
        """Instant query; the result vector."""
        params: dict[str, Any] = {"query": promql}
        if time is not None:
            params["time"] = time
        return self._api_result("/api/v1/query", params)

    def query_range(
        self, promql: str, start: float, end: float, step: float = 15.0
    ) -> list[dict[str, Any]]:
        """Range query; the result matrix (one dict per series, with "values")."""
        params = {"query": promql, "start": start, "end": end, "step": step}
        return self._api_result("/api/v1/query_range", params)

    def series(
        self, match: str, start: float | None = None, end: float | None = None
    ) -> list[dict[str, Any]]:
        """Label sets of the series matching `match` (default window: Prometheus's)."""
        params: list[tuple[str, Any]] = [("match[]", match)]
        if start is not None:
            params.append(("start", start))
        if end is not None:
            params.append(("end", end))
        return list(self._api("/api/v1/series", params))
