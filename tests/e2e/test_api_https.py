"""The operator API over HTTPS with tokens from a file (`api_tls_cert_file`, `api_tls_key_file`,
`api_tokens_file`), served by a real `fleetgate run` beside a real Mosquitto."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devstack import GatewayProcess, Mosquitto
from gateway.certs import init_ca

pytestmark = pytest.mark.e2e

READ_TOKEN = "r-" + "7" * 40
ADMIN_TOKEN = "a-" + "9" * 40


@pytest.fixture
def https_gateway(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[GatewayProcess]:
    pki = init_ca(tmp_path / "pki", hosts=["localhost"], ips=["127.0.0.1"])
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# operators\n{READ_TOKEN}:read\n{ADMIN_TOKEN}:admin\n")
    gw = GatewayProcess(tmp_path / "gw", mqtt_url=mosquitto.url, settings={
        "api_tls_cert_file": str(pki.server_cert), "api_tls_key_file": str(pki.server_key),
        "api_tokens_file": str(tokens), "api_ca_file": str(pki.ca_cert)})
    gw.start()  # ready: /readyz answered 200 over HTTPS, checked against the CA
    try:
        yield gw
    finally:
        gw.stop()


def test_the_api_answers_over_https_checked_against_its_ca(
        https_gateway: GatewayProcess) -> None:
    gw = https_gateway
    assert gw.url.startswith("https://")
    assert gw.http.get("/healthz").status_code == 200
    devices = gw.http.get("/api/v1/devices",
                          headers={"Authorization": f"Bearer {READ_TOKEN}"})
    assert devices.status_code == 200, devices.text


def test_tokens_from_the_file_are_required_and_scoped(https_gateway: GatewayProcess) -> None:
    gw = https_gateway
    assert gw.http.get("/api/v1/devices").status_code == 401
    assert gw.http.get("/api/v1/devices",
                       headers={"Authorization": "Bearer " + "7" * 42}).status_code == 401
    replay = gw.http.post("/api/v1/dead-letters/replay", json={},
                          headers={"Authorization": f"Bearer {READ_TOKEN}"})
    assert replay.status_code == 403  # read may not replay; admin may
    replay = gw.http.post("/api/v1/dead-letters/replay", json={},
                          headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert replay.status_code != 403 and replay.status_code != 401, replay.text


def test_plain_http_and_an_untrusting_client_get_nothing(https_gateway: GatewayProcess) -> None:
    gw = https_gateway
    plain = f"http://{gw.host}:{gw.port}/healthz"
    with pytest.raises(httpx.TransportError):  # a TLS port answers no plain HTTP
        httpx.get(plain, timeout=5.0)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{gw.url}/healthz", verify=ssl.create_default_context(), timeout=5.0)


def test_the_tokens_never_appear_in_the_log_or_the_api(https_gateway: GatewayProcess) -> None:
    gw = https_gateway
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    answers = [gw.http.get(path, headers=headers)
               for path in ("/api/v1/pipeline", "/api/v1/devices", "/metrics", "/openapi.json")]
    assert [a.status_code for a in answers] == [200] * 4
    pages = [a.text for a in answers]
    for text in [*pages, gw.run_log()]:
        assert READ_TOKEN not in text and ADMIN_TOKEN not in text
