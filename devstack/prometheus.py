"""Prometheus rendered from the shipped `deploy/prometheus/prometheus.yml`.

The file's scrape targets, rule files and out-of-order window are filled in (lines marked
`fleetgate:gateway-targets` and `fleetgate:rule-files`); the remote-write receiver is on.
With a `WebConfig` it guards its own HTTP (`--web.config.file`: TLS and/or basic auth), as a
receiver on an open network does; this object's own client then speaks https and logs in.
"""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from devstack.checkout import SHIPPED_PROMETHEUS_YML, read_shipped
from devstack.http_service import HttpService
from devstack.ports import LOOPBACK
from devstack.process import ServiceFailed

_TARGETS_MARKER = "fleetgate:gateway-targets"
_RULES_MARKER = "fleetgate:rule-files"
# bcrypt's lowest cost: Prometheus checks the hash on every request it serves, and a test's
# hash guards a loopback port, not a password database.
_BCRYPT_ROUNDS = 4


@dataclass(frozen=True)
class WebConfig:
    """What `--web.config.file` makes Prometheus demand: TLS with cert_file/key_file (ca_file:
    the CA that signed them, which this object's own client trusts), optionally a client
    certificate signed by client_ca_file (mutual TLS; this object's client presents
    client_cert = (cert, key)), and/or basic auth for `users` (name -> password; the file holds
    only their bcrypt hashes)."""

    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    client_ca_file: Path | None = None
    client_cert: tuple[Path, Path] | None = None
    users: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("WebConfig: TLS needs both cert_file and key_file")
        if (self.ca_file or self.client_ca_file or self.client_cert) and not self.cert_file:
            raise ValueError("WebConfig: CA and client certificate files need TLS (cert_file)")
        if bool(self.client_ca_file) != bool(self.client_cert):
            raise ValueError("WebConfig: mutual TLS needs client_ca_file and, for devstack's "
                             "own client, client_cert")

    @property
    def tls(self) -> bool:
        return self.cert_file is not None

    def client_verify(self) -> ssl.SSLContext | bool:
        """httpx's `verify` for a client of this Prometheus: its CA and client certificate."""
        if not self.ca_file and not self.client_cert:
            return True
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.client_cert:
            context.load_cert_chain(*self.client_cert)
        return context

    def render(self) -> str:
        """The web config file (a JSON document is a YAML document)."""
        import bcrypt  # a dev dependency, needed only by a guarded Prometheus

        doc: dict[str, Any] = {}
        if self.cert_file and self.key_file:
            tls = doc["tls_server_config"] = {"cert_file": str(Path(self.cert_file).resolve()),
                                              "key_file": str(Path(self.key_file).resolve())}
            if self.client_ca_file:
                tls["client_auth_type"] = "RequireAndVerifyClientCert"
                tls["client_ca_file"] = str(Path(self.client_ca_file).resolve())
        if self.users:
            doc["basic_auth_users"] = {
                user: bcrypt.hashpw(password.encode(),
                                    bcrypt.gensalt(rounds=_BCRYPT_ROUNDS)).decode()
                for user, password in self.users.items()}
        return json.dumps(doc, indent=2) + "\n"


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
        web_config: WebConfig | None = None,
    ) -> None:
        super().__init__(workdir, port)
        self.web_config = web_config
        self.web_config_path = self.workdir / "web.yml"
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

    @property
    def url(self) -> str:
        scheme = "https" if self.web_config and self.web_config.tls else "http"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def http(self) -> httpx.Client:
        """The API client; against a guarded Prometheus it trusts the web config's CA (never
        an unverified connection), presents its client certificate, logs in as its first user."""
        if self._http is None:
            web = self.web_config or WebConfig()
            auth = next(iter(web.users.items()), None)
            self._http = httpx.Client(base_url=self.url, timeout=10.0, verify=web.client_verify(),
                                      auth=auth)
        return self._http

    def _prepare(self) -> None:
        self.config_path.write_text(self.render_config())
        if self.web_config is not None:
            self.web_config_path.write_text(self.web_config.render())

    def _command(self, binary: str) -> list[str]:
        web = [f"--web.config.file={self.web_config_path}"] if self.web_config else []
        return [
            binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.data_dir}",
            f"--web.listen-address={LOOPBACK}:{self.port}",
            "--web.enable-remote-write-receiver",
            "--web.enable-lifecycle",
            *web,
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
