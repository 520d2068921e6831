"""The gateway itself (`python -m gateway.cli run`) as a child process of a test or the demo."""

from __future__ import annotations

import os
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from devstack.http_service import HttpService
from devstack.ports import LOOPBACK


class GatewayProcess(HttpService):
    """`fleetgate run` as a child process, configured only through FLEETGATE_* variables.

    Ready when /readyz answers 200 (broker connected, database writable); pass
    `wait_ready=False` to start() for scenarios where the broker is meant to be away.
    """

    name = "fleetgate"
    binary_names = (sys.executable,)
    ready_path = "/readyz"
    ready_timeout = 60.0

    def __init__(self, workdir: Path | str, *, mqtt_url: str,
                 remote_write_urls: Sequence[str] = (), port: int | None = None,
                 settings: dict[str, str] | None = None, api_host: str = LOOPBACK,
                 command_prefix: Sequence[str] = ()) -> None:
        super().__init__(workdir, port)
        self.mqtt_url = mqtt_url
        self.remote_write_urls = list(remote_write_urls)
        self.settings = dict(settings or {})
        self.data_dir = self.workdir / "data"
        self.host = api_host
        # e.g. ("ip", "netns", "exec", NS): it execs the gateway, so the PID stays the gateway's
        self.command_prefix = tuple(command_prefix)

    def _command(self, binary: str) -> list[str]:
        return [*self.command_prefix, binary, "-m", "gateway.cli", "run"]

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGATE_")}
        env.update({
            "FLEETGATE_MQTT_URL": self.mqtt_url,
            "FLEETGATE_DATA_DIR": str(self.data_dir),
            "FLEETGATE_REMOTE_WRITE_URL": ",".join(self.remote_write_urls),
            "FLEETGATE_API_LISTEN": f"{self.host}:{self.port}",
            "PYTHONUNBUFFERED": "1",
        })
        env.update({f"FLEETGATE_{k.upper()}": v for k, v in self.settings.items()
                    if k != "api_ca_file"})
        return env

    @property
    def url(self) -> str:
        scheme = "https" if self.settings.get("api_tls_cert_file") else "http"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def http(self) -> httpx.Client:
        """The API client; over HTTPS it trusts `api_ca_file` (a settings key of devstack's
        own: the CA that signed api_tls_cert_file), never an unverified connection."""
        if self._http is None:
            ca = self.settings.get("api_ca_file")
            verify: Any = ssl.create_default_context(cafile=ca) if ca else True
            self._http = httpx.Client(base_url=self.url, timeout=10.0, verify=verify)
        return self._http

    def auth_headers(self) -> dict[str, str]:
        """A bearer header with the first of its api_tokens, if it has any."""
        tokens = self.settings.get("api_tokens", "")
        token = tokens.split(",")[0].rpartition(":")[0].strip()
        return {"Authorization": f"Bearer {token}"} if token else {}

    def pipeline(self) -> dict[str, Any]:
        return self.http.get("/api/v1/pipeline",
                             headers=self.auth_headers()).raise_for_status().json()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples matching labels, from /metrics (0 when absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        total = 0.0
        text = self.http.get("/metrics").raise_for_status().text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v
                                               for k, v in labels.items()):
                    total += sample.value
        return total

    def caught_up(self) -> bool:
        """Every endpoint has taken every committed frame."""
        try:
            state = self.pipeline()
        except httpx.TransportError:
            return False
        return all(e["cursor"] >= state["committed_upto"] for e in state["endpoints"])
