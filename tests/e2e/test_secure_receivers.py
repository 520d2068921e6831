"""The real gateway sending to receivers that guard themselves (issue 13, "Gateway -> receivers"):
Prometheus 2.42 with --web.config.file (TLS from a private CA, basic auth), VictoriaMetrics 1.79
behind vmauth (a bearer token), and a tenant header.

Right credentials: every sample arrives. Wrong ones: nothing is dead-lettered or dropped, the
endpoint pauses (its state, last_error and fleetgate_forward_paused say so) with every frame
kept in the buffer, and no secret, not even the one vmauth echoes back, shows in the gateway's
log or API. A receiver certificate the endpoint does not trust pauses it too; a client
certificate missing where the receiver demands one costs no frame either.

The first test shows each guard refusing what it must (so the gateway tests cannot pass against
a receiver that lets anything in) and devstack's own clients getting through.
"""

from __future__ import annotations

import secrets
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import tests.support.factories as f
from devstack import Mosquitto, Prometheus, VictoriaMetrics, wait_for
from devstack.prometheus import WebConfig
from devstack.vmauth import VmAuth
from gateway.certs import CaPaths, init_ca, issue_client
from gateway.credentials import basic_credentials
from tests.support.header_receiver import HeaderRecordingReceiver
from tests.support.receivers import account, expected_temperatures, prom_counts, vm_samples
from tests.support.secure_endpoints import (
    GatewayFactory,
    dead_letter_rows,
    endpoint,
    is_paused,
    leaks,
    publish_fleet,
    secret_file,
    start_gateway,
)
from tests.support.services import running

pytestmark = pytest.mark.e2e

METRIC = "device_temperature_celsius"  # its values encode device and seq (tests.support.factories)
USER = "fleetgate"
# Random per run: a secret that shows up somewhere was put there, not met by chance.
PASSWORD = secrets.token_urlsafe(18)
TOKEN = secrets.token_urlsafe(24)
DEVICES, SEQS = range(5), range(20)
FRAMES = len(DEVICES) * (len(SEQS) + 1)  # a birth each, then the telemetry


@pytest.fixture
def pki(tmp_path: Path) -> CaPaths:
    """A private CA and a server certificate for 127.0.0.1 and localhost."""
    return init_ca(tmp_path / "pki", hosts=["localhost"], ips=["127.0.0.1"])


@pytest.fixture
def guarded_prometheus(tmp_path: Path, pki: CaPaths) -> Iterator[Prometheus]:
    """Prometheus serving only https (the private CA's certificate), to USER/PASSWORD only."""
    web = WebConfig(cert_file=pki.server_cert, key_file=pki.server_key, ca_file=pki.ca_cert,
                    users={USER: PASSWORD})
    yield from running(Prometheus(tmp_path / "prometheus", web_config=web))


@pytest.fixture
def mtls_prometheus(tmp_path: Path, pki: CaPaths) -> Iterator[Prometheus]:
    """Prometheus serving https only to clients with a certificate from the private CA."""
    web = WebConfig(cert_file=pki.server_cert, key_file=pki.server_key, ca_file=pki.ca_cert,
                    client_ca_file=pki.ca_cert, client_cert=issue_client(pki.dir, "devstack"))
    yield from running(Prometheus(tmp_path / "prometheus-mtls", web_config=web))


@pytest.fixture
def vmauth(tmp_path: Path, victoria_metrics: VictoriaMetrics) -> Iterator[VmAuth]:
    """vmauth passing requests with TOKEN on to VictoriaMetrics."""
    yield from running(VmAuth(tmp_path / "vmauth", users=[(TOKEN, victoria_metrics.url)]))


def _prometheus_endpoint(prom: Prometheus, pki: CaPaths, password_file: Path) -> dict[str, object]:
    return {"url": prom.remote_write_url, "name": "prom-tls", "ca_file": pki.ca_cert,
            "basic_auth_username": USER, "basic_auth_password_file": password_file}


def _expected_counts() -> dict[str, int]:
    return {f.device_id(i): len(SEQS) for i in DEVICES}


def _assert_nothing_dead_lettered(gw_endpoint: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    assert gw_endpoint["dead_letters"] == 0, gw_endpoint
    assert rows == []


def test_the_guarded_receivers_let_in_only_the_right_credentials(
        guarded_prometheus: Prometheus, vmauth: VmAuth, pki: CaPaths) -> None:
    """devstack's guards are real: what the gateway tests below rely on to mean anything."""
    prom, trusted = guarded_prometheus, ssl.create_default_context(cafile=pki.ca_cert)
    plain = httpx.get(f"http://127.0.0.1:{prom.port}/-/ready")
    assert plain.status_code == 400, plain.text  # "an HTTP request to an HTTPS server"
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{prom.url}/-/ready")  # the system's trust store knows no private CA
    assert httpx.get(f"{prom.url}/-/ready", verify=trusted).status_code == 401
    assert httpx.get(f"{prom.url}/-/ready", verify=trusted,
                     auth=(USER, PASSWORD + "x")).status_code == 401
    assert httpx.get(f"{prom.url}/-/ready", verify=trusted, auth=(USER, PASSWORD)).is_success
    assert prom.query("vector(1)")[0]["value"][1] == "1"  # devstack's own client gets in
    assert PASSWORD not in prom.web_config_path.read_text()  # only its bcrypt hash

    assert httpx.post(vmauth.remote_write_url).status_code == 401
    wrong = httpx.post(vmauth.remote_write_url, headers={"Authorization": "Bearer nope"})
    assert (wrong.status_code, wrong.text.strip()) == (
        400, 'cannot find the provided auth token "Bearer nope" in config')
    through = httpx.get(f"{vmauth.url}/api/v1/query", params={"query": "vector(1)"},
                        headers={"Authorization": f"Bearer {TOKEN}"})
    assert through.json()["status"] == "success", through.text  # VictoriaMetrics answered
    assert vmauth.config_path.stat().st_mode & 0o777 == 0o600


def test_prometheus_over_https_with_basic_auth_receives_every_sample(
        tmp_path: Path, mosquitto: Mosquitto, guarded_prometheus: Prometheus, pki: CaPaths,
        gateway_factory: GatewayFactory) -> None:
    prom = guarded_prometheus
    assert prom.remote_write_url.startswith("https://")
    password_file = secret_file(tmp_path / "secrets" / "prom-password", PASSWORD)
    gw = start_gateway(gateway_factory, mosquitto,
                       _prometheus_endpoint(prom, pki, password_file), log_level="DEBUG")

    publish_fleet(mosquitto, DEVICES, SEQS, f.now_ms() - 60_000)

    wait_for(lambda: prom_counts(prom, METRIC) == _expected_counts(), 60,
             what="every sample in Prometheus over https with basic auth")
    wait_for(gw.caught_up, 10, what="the endpoint's cursor at the last frame")
    state = endpoint(gw, "prom-tls")
    assert state["state"] == "sending" and state["last_error"] is None, state
    _assert_nothing_dead_lettered(state, dead_letter_rows(gw))
    assert leaks(gw, PASSWORD, basic_credentials(USER, PASSWORD)) == []


def test_prometheus_wrong_password_pauses_and_the_fixed_file_delivers_everything(
        tmp_path: Path, mosquitto: Mosquitto, guarded_prometheus: Prometheus, pki: CaPaths,
        gateway_factory: GatewayFactory) -> None:
    prom = guarded_prometheus
    wrong = secrets.token_urlsafe(18)
    password_file = secret_file(tmp_path / "secrets" / "prom-password", wrong)
    gw = start_gateway(gateway_factory, mosquitto,
                       _prometheus_endpoint(prom, pki, password_file), log_level="DEBUG")

    frames = publish_fleet(mosquitto, DEVICES, SEQS, f.now_ms() - 60_000)

    wait_for(lambda: gw.metric("fleetgate_frames_stored_total") == frames
             and is_paused(gw, "prom-tls"), 30, what="the endpoint paused on the wrong password")
    state = endpoint(gw, "prom-tls")
    assert "401" in str(state["last_error"]), state
    assert state["paused_reason"], state
    _assert_nothing_dead_lettered(state, dead_letter_rows(gw))
    assert gw.metric("fleetgate_forward_dead_letters_total") == 0
    assert state["behind_frames"] == frames, state  # every frame kept, waiting
    assert prom_counts(prom, METRIC) == {}
    secrets_sent = (wrong, basic_credentials(USER, wrong), PASSWORD)
    assert leaks(gw, *secrets_sent) == []
    assert "prom-tls: paused" in gw.run_log()  # the operator is told (and the check above saw it)

    secret_file(password_file, PASSWORD)  # the operator's fix: no restart

    wait_for(lambda: prom_counts(prom, METRIC) == _expected_counts(), 30,
             what="the paused frames delivered once the password file is right")
    wait_for(gw.caught_up, 10, what="the endpoint's cursor at the last frame")
    assert not is_paused(gw, "prom-tls")
    _assert_nothing_dead_lettered(endpoint(gw, "prom-tls"), dead_letter_rows(gw))
    assert leaks(gw, *secrets_sent, basic_credentials(USER, PASSWORD)) == []


def test_prometheus_demanding_a_client_certificate_takes_the_endpoints_cert_file(
        mosquitto: Mosquitto, mtls_prometheus: Prometheus, pki: CaPaths,
        gateway_factory: GatewayFactory) -> None:
    prom = mtls_prometheus
    with pytest.raises(httpx.TransportError):  # no client certificate: the handshake fails
        httpx.get(f"{prom.url}/-/ready", verify=ssl.create_default_context(cafile=pki.ca_cert))
    cert_file, key_file = issue_client(pki.dir, "fleetgate")
    gw = start_gateway(gateway_factory, mosquitto,
                       {"url": prom.remote_write_url, "name": "prom-mtls", "ca_file": pki.ca_cert,
                        "cert_file": cert_file, "key_file": key_file})

    publish_fleet(mosquitto, DEVICES, SEQS, f.now_ms() - 60_000)

    wait_for(lambda: prom_counts(prom, METRIC) == _expected_counts(), 60,
             what="every sample in Prometheus over mutual TLS")
    wait_for(gw.caught_up, 10, what="the endpoint's cursor at the last frame")
    state = endpoint(gw, "prom-mtls")
    assert (state["retries"], state["last_error"]) == (0, None), state
    _assert_nothing_dead_lettered(state, dead_letter_rows(gw))


def test_a_receiver_certificate_the_endpoint_does_not_trust_pauses_it(
        tmp_path: Path, mosquitto: Mosquitto, guarded_prometheus: Prometheus,
        gateway_factory: GatewayFactory) -> None:
    prom = guarded_prometheus
    password_file = secret_file(tmp_path / "secrets" / "prom-password", PASSWORD)
    # No ca_file: the system's trust store, which knows nothing of the private CA.
    gw = start_gateway(gateway_factory, mosquitto,
                       {"url": prom.remote_write_url, "name": "prom-tls",
                        "basic_auth_username": USER, "basic_auth_password_file": password_file})

    frames = publish_fleet(mosquitto, DEVICES, SEQS, f.now_ms() - 60_000)

    wait_for(lambda: gw.metric("fleetgate_frames_stored_total") == frames
             and is_paused(gw, "prom-tls"), 30, what="the endpoint paused on the certificate")
    state = endpoint(gw, "prom-tls")
    assert "TLS" in str(state["last_error"]), state
    _assert_nothing_dead_lettered(state, dead_letter_rows(gw))
    assert state["behind_frames"] == frames, state
    assert prom_counts(prom, METRIC) == {}


def test_a_receiver_refusing_the_missing_client_certificate_costs_no_frame(
        mosquitto: Mosquitto, mtls_prometheus: Prometheus, pki: CaPaths,
        gateway_factory: GatewayFactory) -> None:
    """Whether the gateway retries or pauses, the frames wait for the certificate."""
    prom = mtls_prometheus
    gw = start_gateway(gateway_factory, mosquitto,
                       {"url": prom.remote_write_url, "name": "prom-mtls", "ca_file": pki.ca_cert})

    frames = publish_fleet(mosquitto, DEVICES, SEQS, f.now_ms() - 60_000)

    wait_for(lambda: gw.metric("fleetgate_frames_stored_total") == frames
             and endpoint(gw, "prom-mtls")["last_error"] is not None
             and gw.metric("fleetgate_forward_requests_total", endpoint="prom-mtls") >= 3, 30,
             what="three refused attempts")
    state = endpoint(gw, "prom-mtls")
    assert state["sent_samples"] == 0 and state["behind_frames"] == frames, state
    _assert_nothing_dead_lettered(state, dead_letter_rows(gw))
    assert prom_counts(prom, METRIC) == {}


def test_victoria_metrics_behind_vmauth_with_a_bearer_token(
        tmp_path: Path, mosquitto: Mosquitto, victoria_metrics: VictoriaMetrics, vmauth: VmAuth,
        gateway_factory: GatewayFactory) -> None:
    token_file = secret_file(tmp_path / "secrets" / "vm-token", TOKEN)
    gw = start_gateway(gateway_factory, mosquitto,
                       {"url": vmauth.remote_write_url, "name": "vm-gated",
                        "bearer_token_file": token_file}, log_level="DEBUG")

    publish_fleet(mosquitto, DEVICES, SEQS, f.now_ms() - 60_000)

    expected = expected_temperatures(DEVICES, SEQS)
    wait_for(lambda: account(vm_samples(victoria_metrics, METRIC), expected) == (0, 0), 60,
             what="every sample in VictoriaMetrics through vmauth, once")
    wait_for(gw.caught_up, 10, what="the endpoint's cursor at the last frame")
    _assert_nothing_dead_lettered(endpoint(gw, "vm-gated"), dead_letter_rows(gw))
    assert account(vm_samples(victoria_metrics, METRIC), expected) == (0, 0)
    assert leaks(gw, TOKEN) == []


def test_vmauth_wrong_token_pauses_that_endpoint_only_and_its_echo_is_redacted(
        tmp_path: Path, mosquitto: Mosquitto, victoria_metrics: VictoriaMetrics, vmauth: VmAuth,
        gateway_factory: GatewayFactory) -> None:
    wrong = secrets.token_urlsafe(24)
    echo = httpx.post(vmauth.remote_write_url, headers={"Authorization": f"Bearer {wrong}"})
    assert (echo.status_code, wrong in echo.text) == (400, True)  # vmauth 1.79 echoes it
    token_file = secret_file(tmp_path / "secrets" / "vm-token", wrong)
    with HeaderRecordingReceiver() as other:
        gw = start_gateway(gateway_factory, mosquitto,
                           {"url": vmauth.remote_write_url, "name": "vm-gated",
                            "bearer_token_file": token_file},
                           {"url": other.remote_write_url, "name": "other"}, log_level="DEBUG")

        frames = publish_fleet(mosquitto, DEVICES, SEQS, f.now_ms() - 60_000)

        wait_for(lambda: gw.metric("fleetgate_frames_stored_total") == frames
                 and is_paused(gw, "vm-gated"), 30, what="vm-gated paused on the wrong token")
        # The other endpoint is not held back by the paused one.
        expected = expected_temperatures(DEVICES, SEQS)
        wait_for(lambda: account(other.samples(METRIC), expected) == (0, 0), 30,
                 what="the other endpoint to receive every sample meanwhile")
    state = endpoint(gw, "vm-gated")
    assert "cannot find the provided auth token" in str(state["last_error"]), state
    assert "<redacted>" in str(state["last_error"]), state
    _assert_nothing_dead_lettered(state, dead_letter_rows(gw))
    assert gw.metric("fleetgate_forward_dead_letters_total") == 0
    assert state["behind_frames"] == frames, state
    assert vm_samples(victoria_metrics, METRIC) == {}
    assert "vm-gated: paused" in gw.run_log()
    assert leaks(gw, "vm-gated")  # the search reads what the operator sees ...
    assert leaks(gw, wrong, TOKEN) == []  # ... and no token is in it


def test_the_tenant_header_reaches_the_receiver_with_every_request(
        mosquitto: Mosquitto, gateway_factory: GatewayFactory) -> None:
    with HeaderRecordingReceiver() as receiver:
        gw = start_gateway(gateway_factory, mosquitto,
                           {"url": receiver.remote_write_url, "name": "tenant-a",
                            "headers": {"X-Scope-OrgID": "fleet-a"}})

        publish_fleet(mosquitto, DEVICES, SEQS, f.now_ms() - 60_000)

        expected = expected_temperatures(DEVICES, SEQS)
        wait_for(lambda: account(receiver.samples(METRIC), expected) == (0, 0), 30,
                 what="every sample at the header-recording receiver")
        wait_for(gw.caught_up, 10, what="the endpoint's cursor at the last frame")
        requests = receiver.received()
    assert requests and all(r.status == 204 for r in requests)
    assert {r.headers.get("x-scope-orgid") for r in requests} == {"fleet-a"}
    # The configured header rides beside the protocol's own, which it cannot replace.
    assert {(r.headers.get("content-encoding"), r.headers.get("x-prometheus-remote-write-version"))
            for r in requests} == {("snappy", "0.1.0")}
