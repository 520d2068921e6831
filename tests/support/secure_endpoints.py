"""A gateway sending to receivers that guard themselves, and what tests read back from it: an
endpoint's status, whether it is paused, and whether a secret shows anywhere an operator looks.

Endpoints are given as `[[remote_write]]` objects (FLEETGATE_REMOTE_WRITE, a JSON list) and no
plain remote_write_url, so the gateway knows each receiver only by its name.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tests.support.publisher as publisher
from devstack import GatewayProcess, Mosquitto
from tests.support.publisher import Publisher

GatewayFactory = Callable[..., GatewayProcess]  # the gateway_factory fixture (tests/conftest.py)
# A paused endpoint is probed this often: a fixed credential is picked up within it.
PROBE_S = "0.5"


def secret_file(path: Path, secret: str) -> Path:
    """Write a secret as an operator would: one line, readable by its owner only. Replaced
    whole (a rename), so the gateway never reads half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    os.replace(tmp, path)
    return path


def start_gateway(factory: GatewayFactory, mosquitto: Mosquitto, *endpoints: dict[str, Any],
                  **settings: str) -> GatewayProcess:
    """A started gateway whose only endpoints are these objects (paths may be Path)."""
    listed = json.dumps([{k: str(v) if isinstance(v, Path) else v for k, v in e.items()}
                         for e in endpoints])
    settings = {"remote_write_paused_probe_s": PROBE_S, "remote_write_retry_max_s": "1",
                **settings}
    return factory(mosquitto, remote_write=listed, **settings)


def publish_fleet(mosquitto: Mosquitto, devices: range, seqs: range, base_ms: int) -> int:
    """Births, then telemetry seq by seq; the number of frames published (all acknowledged)."""
    with Publisher(mosquitto.url) as pub:
        return (pub.publish(publisher.births(devices))
                + pub.publish(publisher.telemetry(devices, seqs, base_ms)))


def endpoint(gw: GatewayProcess, name: str) -> dict[str, Any]:
    """One endpoint's entry of /api/v1/pipeline."""
    found = [e for e in gw.pipeline()["endpoints"] if e["endpoint"] == name]
    assert len(found) == 1, f"endpoint {name!r} not in {gw.pipeline()['endpoints']}"
    return found[0]


def is_paused(gw: GatewayProcess, name: str) -> bool:
    """Paused as an operator sees it: the API's state and the metric alerts read."""
    return (endpoint(gw, name)["state"] == "paused"
            and gw.metric("fleetgate_forward_paused", endpoint=name) == 1)


def dead_letter_rows(gw: GatewayProcess) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = gw.http.get(
        "/api/v1/dead-letters", headers=gw.auth_headers()).raise_for_status().json()
    return rows


def operator_views(gw: GatewayProcess) -> dict[str, str]:
    """Everything the gateway shows an operator: its log and its API's answers, as text."""
    headers = gw.auth_headers()
    views = {"log": gw.run_log()}
    for path in ("/api/v1/pipeline", "/api/v1/dead-letters", "/api/v1/quarantine", "/metrics",
                 "/readyz", "/healthz"):
        views[path] = gw.http.get(path, headers=headers).text
    return views


def leaks(gw: GatewayProcess, *secrets: str) -> list[str]:
    """Where any of `secrets` shows (empty: nowhere). Each secret is also looked for in the
    forms a receiver's echo or a header would carry it."""
    forms = {s for s in secrets if s}
    forms |= {base64.b64encode(s.encode()).decode() for s in list(forms)}
    return [f"{view} shows {form[:3]}..." for view, text in operator_views(gw).items()
            for form in forms if form in text]


