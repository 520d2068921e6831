"""TLS to a remote-write endpoint (issue 13): a private CA (ca_file), a client certificate
(cert_file + key_file, mutual TLS), hostname verification always on. The contexts are built from
certificates `openssl` makes in a temporary directory, and a real handshake runs against a local
HTTPS receiver that requires a client certificate (the receivers themselves, Prometheus with
--web.config.file and vmauth, are the e2e tests' business)."""

from __future__ import annotations

import asyncio
import http.server
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.endpoint_config import RemoteWriteEndpoint
from gateway.errors import ConfigError
from gateway.forward.auth import tls_context
from gateway.forward.client import (
    Accepted,
    HttpRemoteWriteClient,
    Misconfigured,
    Retryable,
    SendResult,
)
from gateway.remote_write.wire import build_body, compress, encode_entry, encode_labels
from tests.support.tools import system_tool

BODY = compress(build_body([encode_entry(encode_labels([("__name__", "up")]), 1.0, 1000)]))


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here
    encrypted_key: Path


def _openssl(*args: str | Path) -> None:
    subprocess.run([system_tool("openssl", "openssl"), *map(str, args)], check=True,
                   capture_output=True, timeout=60)


def _issue(d: Path, name: str, subject: str, extensions: str, ca: Path, ca_key: Path) -> None:
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", d / f"{name}.key", "-out", d / f"{name}.csr", "-subj", subject)
    (d / f"{name}.ext").write_text(extensions)
    _openssl("x509", "-req", "-in", d / f"{name}.csr", "-CA", ca, "-CAkey", ca_key,
             "-CAcreateserial", "-days", "2", "-out", d / f"{name}.pem",
             "-extfile", d / f"{name}.ext")


def _ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", d / f"{name}.key", "-out", d / f"{name}.pem", "-days", "2",
             "-subj", f"/CN={name}")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    _ca(d, "test-ca")
    _ca(d, "other-ca")
    ca, ca_key = d / "test-ca.pem", d / "test-ca.key"
    # The server's certificate names localhost only: https://127.0.0.1 must then fail.
    _issue(d, "server", "/CN=localhost", "subjectAltName=DNS:localhost\n"
           "extendedKeyUsage=serverAuth\n", ca, ca_key)
    _issue(d, "client", "/CN=fleetgate", "extendedKeyUsage=clientAuth\n", ca, ca_key)
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-aes-128-cbc", "-pass", "pass:secret", "-out", d / "encrypted.key")
    return Pki(ca, d / "server.pem", d / "server.key", d / "client.pem", d / "client.key",
               d / "other-ca.pem", d / "encrypted.key")


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        peer: Any = self.connection.getpeercert()  # type: ignore[attr-defined]
        self.server.peers.append(dict(x[0] for x in peer["subject"]))  # type: ignore[attr-defined]
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def https_receiver(pki: Pki) -> Iterator[tuple[int, list[dict[str, str]]]]:
    """A receiver on 127.0.0.1 that requires a client certificate of the test CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    context.load_verify_locations(pki.ca)
    context.verify_mode = ssl.CERT_REQUIRED
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.peers = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], server.peers  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def endpoint(host: str, port: int, **kw: Any) -> RemoteWriteEndpoint:
    return RemoteWriteEndpoint(url=f"https://{host}:{port}/api/v1/write", name="tls", **kw)


def send(target: RemoteWriteEndpoint) -> SendResult:
    async def run() -> SendResult:
        client = HttpRemoteWriteClient(target, timeout_s=10.0)
        try:
            return await client.send(BODY)
        finally:
            await client.aclose()

    return asyncio.run(run())


def test_the_context_trusts_the_ca_file_verifies_host_names_and_carries_the_client_cert(
        pki: Pki) -> None:
    context = tls_context(RemoteWriteEndpoint(
        url="https://rw.example/api/v1/write", ca_file=pki.ca, cert_file=pki.client_cert,
        key_file=pki.client_key))
    assert context is not None
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "test-ca"),),)]
    system = tls_context(RemoteWriteEndpoint(url="https://rw.example/api/v1/write"))
    assert system is not None and system.check_hostname  # the system's trust store
    assert tls_context(RemoteWriteEndpoint(url="http://rw.example/api/v1/write")) is None


def test_unreadable_tls_files_are_start_up_errors_that_name_them(pki: Pki,
                                                                 tmp_path: Path) -> None:
    url = "https://rw.example/api/v1/write"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="ca_file"):
        tls_context(RemoteWriteEndpoint(url=url, ca_file=garbage))
    with pytest.raises(ConfigError, match="ca_file"):
        tls_context(RemoteWriteEndpoint(url=url, ca_file=tmp_path / "absent.pem"))
    with pytest.raises(ConfigError, match="is encrypted"):  # never a passphrase prompt
        tls_context(RemoteWriteEndpoint(url=url, cert_file=pki.client_cert,
                                        key_file=pki.encrypted_key))
    with pytest.raises(ConfigError, match=r"cert_file .* with key_file"):  # not its key
        tls_context(RemoteWriteEndpoint(url=url, cert_file=pki.client_cert,
                                        key_file=pki.server_key))
    with pytest.raises(ConfigError, match="ca_file"):  # HttpRemoteWriteClient: at start-up
        HttpRemoteWriteClient(RemoteWriteEndpoint(url=url, ca_file=garbage))


def test_mutual_tls_with_a_private_ca_reaches_the_receiver(
        pki: Pki, https_receiver: tuple[int, list[dict[str, str]]]) -> None:
    port, peers = https_receiver
    target = endpoint("localhost", port, ca_file=pki.ca, cert_file=pki.client_cert,
                      key_file=pki.client_key)
    assert send(target) == Accepted(204)
    assert peers == [{"commonName": "fleetgate"}]  # the receiver saw our client certificate


@pytest.mark.parametrize("case", ["system-trust", "other-ca", "host-not-named"])
def test_a_certificate_we_cannot_trust_is_a_configuration_error(
        pki: Pki, https_receiver: tuple[int, list[dict[str, str]]], case: str) -> None:
    port, peers = https_receiver
    client_cert = {"cert_file": pki.client_cert, "key_file": pki.client_key}
    target = {
        "system-trust": endpoint("localhost", port, **client_cert),
        "other-ca": endpoint("localhost", port, ca_file=pki.other_ca, **client_cert),
        # the certificate names localhost, not 127.0.0.1: hostname verification is on
        "host-not-named": endpoint("127.0.0.1", port, ca_file=pki.ca, **client_cert),
    }[case]
    result = send(target)
    assert isinstance(result, Misconfigured) and result.status == 0, result
    assert "certificate" in result.reason and "ca_file" in result.reason
    assert peers == []


def test_a_receiver_closing_on_a_missing_client_certificate_gets_a_reason_that_names_it(
        pki: Pki, https_receiver: tuple[int, list[dict[str, str]]]) -> None:
    """TLS 1.3: the receiver checks the client certificate after the handshake and hangs up, so
    the client sees a closed connection (httpx: ReadError('')) or, when the alert wins the race,
    a raw ssl.SSLError. Still retried (a receiver restarting looks the same), but the reason says
    what to check."""
    port, peers = https_receiver
    result = send(endpoint("localhost", port, ca_file=pki.ca))
    assert isinstance(result, Retryable), result
    assert "cert_file" in result.reason and "client certificate" in result.reason, result.reason
    assert peers == []


def send_through(handler: Any) -> SendResult:
    """Send once through the real client with `handler` as its transport."""
    async def run() -> SendResult:
        target = RemoteWriteEndpoint(url="https://rw.example/api/v1/write", name="tls")
        client = HttpRemoteWriteClient(target, transport=httpx.MockTransport(handler))
        try:
            return await client.send(BODY)
        finally:
            await client.aclose()

    return asyncio.run(run())


@pytest.mark.parametrize("error", [
    # what CI met: the receiver's alert reached us during the read, and httpcore let the raw
    # ssl.SSLError through instead of wrapping it in an httpx error
    ssl.SSLError(1, "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required"),
    ConnectionResetError(104, "Connection reset by peer"),
])
def test_a_transport_error_httpx_does_not_wrap_is_a_retry_not_a_crash(error: OSError) -> None:
    """An exception out of send() would end the endpoint's forward task; it must be a result."""
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    result = send_through(handler)
    assert isinstance(result, Retryable), result
    assert type(error).__name__ in result.reason
    if "CERTIFICATE_REQUIRED" in str(error):
        assert "cert_file" in result.reason, result.reason
