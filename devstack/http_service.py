"""A devstack service with an HTTP API (Prometheus, VictoriaMetrics, the gateway itself)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from devstack.ports import LOOPBACK
from devstack.process import ManagedProcess


class HttpService(ManagedProcess):
    """A service with an HTTP API on loopback."""

    ready_path = "/"
    # The address it listens on: loopback, or the root end of a test's veth pair (a gateway
    # run inside a network namespace reaches the service there).
    host: str = LOOPBACK

    def __init__(self, workdir: Path | str, port: int | None = None) -> None:
        super().__init__(workdir, port)
        self._http: httpx.Client | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def remote_write_url(self) -> str:
        return f"{self.url}/api/v1/write"

    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(base_url=self.url, timeout=10.0)
        return self._http

    def _is_ready(self) -> bool:
        try:
            return self.http.get(self.ready_path, timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False

    def _cleanup(self) -> None:
        # Pooled connections die with the process; a fresh client after restart avoids them.
        if self._http is not None:
            self._http.close()
            self._http = None
        super()._cleanup()

    def _api(self, path: str, params: dict[str, Any] | list[tuple[str, Any]]) -> Any:
        response = self.http.get(path, params=params)
        try:
            body = response.json()
        except ValueError:
            body = {"raw": response.text}
        if response.status_code != 200 or body.get("status") != "success":
            raise RuntimeError(f"{self.name} {path} {params!r} -> {response.status_code}: {body}")
        return body["data"]

    def _api_result(
        self, path: str, params: dict[str, Any] | list[tuple[str, Any]]
    ) -> list[dict[str, Any]]:
        """The "result" of a query API answer: a vector or a matrix, as a list."""
        data = self._api(path, params)
        result = data.get("result")
        if not isinstance(result, list):
            raise RuntimeError(
                f"expected a vector or matrix, got {data.get('resultType')}: {result}")
        return result
