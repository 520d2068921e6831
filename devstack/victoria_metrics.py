"""VictoriaMetrics single-node, tuned so tests can read right after writing."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from devstack.http_service import HttpService
from devstack.ports import LOOPBACK


class VictoriaMetrics(HttpService):
    name = "victoria-metrics"
    binary_names: tuple[str, ...] = ("/usr/bin/victoria-metrics", "victoria-metrics")
    ready_path = "/health"

    def __init__(
        self, workdir: Path | str, port: int | None = None, *, extra_args: Sequence[str] = (),
        host: str = LOOPBACK,
    ) -> None:
        super().__init__(workdir, port)
        self.host = host
        self.extra_args = tuple(extra_args)
        self.data_dir = self.workdir / "vm"

    def _command(self, binary: str) -> list[str]:
        return [
            binary,
            f"-httpListenAddr={self.host}:{self.port}",
            f"-storageDataPath={self.data_dir}",
            # Keeps test samples with timestamps years in the past (the default is 1 month).
            "-retentionPeriod=100y",
            # Tests read right after writing: no response cache, no "too fresh" cut-off.
            "-search.disableCache",
            "-search.latencyOffset=0s",
            *self.extra_args,
        ]

    def force_flush(self) -> None:
        """Make every ingested sample searchable (VictoriaMetrics buffers them for ~1 s)."""
        self.http.get("/internal/force_flush").raise_for_status()

    def export(
        self, match: str, start: float | None = None, end: float | None = None
    ) -> list[dict[str, Any]]:
        """Raw samples of matching series: [{"metric": {...}, "values": [...],
        "timestamps": [ms, ...]}, ...]. All time by default."""
        self.force_flush()
        # VictoriaMetrics' default end leaves out samples written in the current second, and
        # it refuses samples more than 2 days ahead, so this end covers everything stored.
        default_end = time.time() + 3 * 86400
        params: list[tuple[str, Any]] = [
            ("match[]", match),
            ("start", 0 if start is None else start),
            ("end", default_end if end is None else end),
        ]
        response = self.http.get("/api/v1/export", params=params)
        if response.status_code != 200:
            raise RuntimeError(
                f"{self.name} export {match!r} -> {response.status_code}: {response.text}"
            )
        return [json.loads(line) for line in response.text.splitlines() if line.strip()]

    def query(self, promql: str, time: float | None = None) -> list[dict[str, Any]]:
        """Instant query (after force_flush); the result vector."""
        self.force_flush()
        params: dict[str, Any] = {"query": promql, "nocache": 1}
        if time is not None:
            params["time"] = time
        return self._api_result("/api/v1/query", params)
