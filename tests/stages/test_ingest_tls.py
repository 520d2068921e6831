"""MQTT over TLS (mqtts://): MqttIngest against a real Mosquitto with TLS listeners, on both
receive paths (mqtt_fast_path on and off), and the TLS settings' start-up errors.

One broker per test with four listeners: plain (the test's publisher), TLS with a certificate
for localhost/127.0.0.1, the same requiring a client certificate, and TLS with a certificate for
another name. The certificates are made with gateway/certs.py (`fleetgate certs`).
"""

from __future__ import annotations

import asyncio
import logging
import select
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives import serialization
from paho.mqtt.enums import CallbackAPIVersion

from devstack import GatewayProcess, Mosquitto, ServiceNotInstalled, wait_for
from devstack.ports import free_port, tcp_accepts
from gateway import certs
from gateway.errors import ConfigError
from gateway.ingest.fastpath import BufferedSocket
from gateway.ingest.inbox import InboundMessage, Inbox
from gateway.ingest.mqtt import MqttIngest
from gateway.ingest.tls import client_context
from gateway.settings import Settings, load_settings
from gateway.stage_config import MqttTls

FAST_PATH = pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "stock-paho"])
TOPIC = "fleet/dev-{}/telemetry"


# ------------------------------------------------------------------------- certificates
@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA the broker's and the client's certificates come from
    server_cert: Path  # SAN localhost, 127.0.0.1
    server_key: Path
    wrong_name_cert: Path  # SAN broker.invalid only (from a CA of its own) ...
    wrong_name_key: Path
    wrong_name_trust: Path  # ... trusted with `ca` here: only the name is wrong
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing the broker uses
    other_key: Path  # a key that is not client_cert's


def make_pki(folder: Path) -> Pki:
    """Certificates made as an operator would, with `fleetgate certs` (gateway/certs.py)."""
    main = certs.init_ca(folder / "main", ["localhost"], ["127.0.0.1"])
    client_cert, client_key = certs.issue_client(main.dir, "fleetgate")
    other_key = certs.issue_client(main.dir, "someone-else")[1]
    wrong = certs.init_ca(folder / "wrong-name", ["broker.invalid"], [])
    trust = folder / "main-and-wrong-name-ca.pem"
    trust.write_bytes(main.ca_cert.read_bytes() + wrong.ca_cert.read_bytes())
    other = certs.init_ca(folder / "other", ["localhost"], ["127.0.0.1"])
    return Pki(main.ca_cert, main.server_cert, main.server_key, wrong.server_cert,
               wrong.server_key, trust, client_cert, client_key, other.ca_cert, other_key)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


# ------------------------------------------------------------------------- the broker
class TlsBroker:
    """Mosquitto with a plain listener (devstack's) and three TLS listeners."""

    def __init__(self, workdir: Path, pki: Pki) -> None:
        self.tls_port, self.mutual_port, self.wrong_name_port = (free_port() for _ in range(3))
        listeners = [(self.tls_port, pki.server_cert, pki.server_key, False),
                     (self.mutual_port, pki.server_cert, pki.server_key, True),
                     (self.wrong_name_port, pki.wrong_name_cert, pki.wrong_name_key, False)]
        conf = []
        for port, cert, key, require in listeners:
            conf += [f"listener {port} 127.0.0.1", f"cafile {pki.ca}", f"certfile {cert}",
                     f"keyfile {key}", f"require_certificate {str(require).lower()}"]
        self.mosquitto = Mosquitto(workdir, extra_conf="\n".join(conf))

    def start(self) -> None:
        self.mosquitto.start()
        ports = (self.tls_port, self.mutual_port, self.wrong_name_port)
        wait_for(lambda: all(tcp_accepts(p) for p in ports), 10, what="TLS listeners not open")

    def clients_connected(self, client_id: str) -> int:
        """How often the broker accepted an MQTT CONNECT from `client_id` (its log says so)."""
        return self.mosquitto.run_log().count(f" as {client_id} ")


@pytest.fixture
def broker(tmp_path: Path, pki: Pki) -> Iterator[TlsBroker]:
    tls = TlsBroker(tmp_path / "mosquitto", pki)
    try:
        tls.start()
    except ServiceNotInstalled as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield tls
    finally:
        tls.mosquitto.stop()


# ------------------------------------------------------------------------- the gateway side
CLIENT_ID = "fleetgate-tls-test"


def tls_settings(port: int, fast_path: bool, host: str = "127.0.0.1",
                 **files: Path | None) -> Settings:
    # Quick retries: the refusal tests wait for a second attempt.
    return load_settings(None, mqtt_url=f"mqtts://{host}:{port}", mqtt_fast_path=fast_path,
                         gateway_id="tls-test", mqtt_reconnect_min_s=0.1,
                         mqtt_reconnect_max_s=0.5, **files)


class Publisher:
    """The test's own client, on the broker's plain listener."""

    def __init__(self, broker: TlsBroker) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="tls-test-pub",
                                  protocol=mqtt.MQTTv5)
        self.client.connect(broker.mosquitto.host, broker.mosquitto.port)
        self.client.loop_start()
        self.probes = 0

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self.client.publish(topic, payload, qos).wait_for_publish(10)

    async def until_probe(self, inbox: Inbox) -> list[InboundMessage]:
        """Publish probes until one comes back: what arrived before it, probes left out."""
        got: list[InboundMessage] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while loop.time() < deadline:
            self.probes += 1
            probe = f"fleet/probe-{self.probes}/death"
            await asyncio.to_thread(self.publish, probe, b"")
            try:
                got += await asyncio.wait_for(inbox.get_batch(5000, 0.2), 0.5)
            except TimeoutError:
                continue
            if any(m.topic == probe for m in got):
                return [m for m in got if not m.topic.startswith("fleet/probe-")]
        raise TimeoutError("no probe came back through the TLS connection")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def connected_ingest(settings: Settings) -> tuple[MqttIngest, Inbox]:
    loop = asyncio.get_running_loop()
    up = asyncio.Event()
    inbox = Inbox(loop, 5000)

    def on_connection_change(connected: bool) -> None:  # on paho's thread
        if connected:
            loop.call_soon_threadsafe(up.set)

    ingest = MqttIngest(settings.mqtt_config(), inbox, on_connection_change)
    ingest.start()
    await asyncio.wait_for(up.wait(), 15)
    return ingest, inbox


# ------------------------------------------------------------------------- tests
SMALL = [(TOPIC.format(i % 7), f"frame {i}".encode() * 3) for i in range(300)]
BIG = (TOPIC.format("big"), bytes(range(256)) * 160)  # 40 KiB: three TLS records


@FAST_PATH
def test_ingest_receives_and_acks_over_tls(fast_path: bool, broker: TlsBroker, pki: Pki) -> None:
    publisher = Publisher(broker)
    sent = [*SMALL[:150], BIG, *SMALL[150:]]

    async def go() -> None:
        settings = tls_settings(broker.tls_port, fast_path, mqtt_ca_file=pki.ca)
        ingest, inbox = await connected_ingest(settings)
        if fast_path:  # the fast path's buffered reads wrap the TLS socket
            fast = ingest._fast_client
            assert fast is not None and isinstance(fast._buffered, BufferedSocket)
            assert isinstance(fast._buffered._sock, ssl.SSLSocket)
        assert await publisher.until_probe(inbox) == []
        for topic, payload in sent:
            await asyncio.to_thread(publisher.publish, topic, payload)
        received = await publisher.until_probe(inbox)
        assert [(m.topic, m.payload) for m in received] == sent
        assert len({m.mid for m in received}) == len(sent)
        ingest.ack(received[:200])  # committed: the rest stays unacked at the broker
        await ingest.stop()

        ingest, inbox = await connected_ingest(settings)
        redelivered = await publisher.until_probe(inbox)
        assert [(m.topic, m.payload) for m in redelivered] == sent[200:]
        await ingest.stop()

    try:
        asyncio.run(go())
    finally:
        publisher.close()
    assert broker.clients_connected(CLIENT_ID) == 2


@FAST_PATH
def test_a_client_certificate_opens_a_listener_that_requires_one(
        fast_path: bool, broker: TlsBroker, pki: Pki) -> None:
    publisher = Publisher(broker)

    async def go() -> None:
        settings = tls_settings(broker.mutual_port, fast_path, host="localhost",
                                mqtt_ca_file=pki.ca, mqtt_cert_file=pki.client_cert,
                                mqtt_key_file=pki.client_key)
        ingest, inbox = await connected_ingest(settings)
        assert await publisher.until_probe(inbox) == []
        await asyncio.to_thread(publisher.publish, *SMALL[0])
        assert [(m.topic, m.payload) for m in await publisher.until_probe(inbox)] == [SMALL[0]]
        await ingest.stop()

    try:
        asyncio.run(go())
    finally:
        publisher.close()


# (listener, host the gateway connects to, CA it trusts, what the log says)
REFUSALS = {
    "ip-not-in-certificate": ("wrong_name_port", "127.0.0.1", "wrong_name_trust",
                              ["IP address mismatch"]),
    "name-not-in-certificate": ("wrong_name_port", "localhost", "wrong_name_trust",
                                ["Hostname mismatch"]),
    "unknown-ca": ("tls_port", "127.0.0.1", "other_ca",
                   ["self-signed certificate", "unable to get local issuer certificate"]),
    "no-client-certificate": ("mutual_port", "127.0.0.1", "ca", ["CERTIFICATE_REQUIRED"]),
}


@pytest.mark.parametrize("case", list(REFUSALS))
@FAST_PATH
def test_a_broker_that_cannot_be_verified_or_refuses_us_is_never_connected_and_logged_why(
        case: str, fast_path: bool, broker: TlsBroker, pki: Pki,
        caplog: pytest.LogCaptureFixture) -> None:
    listener, host, ca, reasons = REFUSALS[case]
    settings = tls_settings(getattr(broker, listener), fast_path, host=host,
                            mqtt_ca_file=getattr(pki, ca))
    changes: list[bool] = []

    def refusals() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "gateway.ingest.tls"]

    async def go() -> None:
        ingest = MqttIngest(settings.mqtt_config(), Inbox(asyncio.get_running_loop(), 10),
                            changes.append)
        ingest.start()
        try:
            # Two refused attempts: it keeps retrying, and keeps saying why.
            await asyncio.to_thread(wait_for, lambda: len(refusals()) >= 2, 15, 0.05,
                                    f"no TLS failure logged; log: {caplog.text}")
            assert not ingest.connected
        finally:
            await ingest.stop()

    with caplog.at_level(logging.INFO):
        asyncio.run(go())
    assert changes == []  # never reported as connected, not even briefly
    assert broker.clients_connected(CLIENT_ID) == 0  # no MQTT session ever began
    assert all(any(reason in message for reason in reasons) for message in refusals()), \
        refusals()


BAD_FILES = {  # setting name the error must carry, and how the files are set
    "ca-missing": ("mqtt_ca_file", lambda p, d: dict(mqtt_ca_file=d / "absent.pem")),
    "ca-not-a-certificate": ("mqtt_ca_file", lambda p, d: dict(mqtt_ca_file=p.client_key)),
    "key-not-the-certificate's": ("mqtt_key_file", lambda p, d: dict(
        mqtt_ca_file=p.ca, mqtt_cert_file=p.client_cert, mqtt_key_file=p.other_key)),
    "cert-not-a-certificate": ("mqtt_cert_file", lambda p, d: dict(
        mqtt_ca_file=p.ca, mqtt_cert_file=p.client_key, mqtt_key_file=p.client_key)),
    "key-missing": ("mqtt_key_file", lambda p, d: dict(
        mqtt_ca_file=p.ca, mqtt_cert_file=p.client_cert, mqtt_key_file=d / "absent.key")),
    "key-encrypted": ("mqtt_key_file", lambda p, d: dict(
        mqtt_ca_file=p.ca, mqtt_cert_file=p.client_cert, mqtt_key_file=_encrypted(p, d))),
}


def _encrypted(pki: Pki, folder: Path) -> Path:
    key = serialization.load_pem_private_key(pki.client_key.read_bytes(), None)
    path = folder / "encrypted.key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(b"secret")))
    return path


@pytest.mark.parametrize("case", list(BAD_FILES))
@FAST_PATH
def test_tls_files_that_do_not_load_are_a_config_error_naming_the_setting(
        case: str, fast_path: bool, pki: Pki, tmp_path: Path) -> None:
    setting, files = BAD_FILES[case]
    settings = tls_settings(8883, fast_path, **files(pki, tmp_path))

    async def go() -> None:
        MqttIngest(settings.mqtt_config(), Inbox(asyncio.get_running_loop(), 10))

    with pytest.raises(ConfigError) as raised:
        asyncio.run(go())
    assert str(raised.value).startswith(setting), raised.value
    assert "secret" not in str(raised.value)


def test_without_a_ca_file_the_system_trust_store_verifies_the_broker(pki: Pki) -> None:
    context = client_context(MqttTls())
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.cert_store_stats()["x509_ca"] > 0  # the system's CAs, not none
    private = client_context(MqttTls(ca_file=pki.ca))
    assert private.cert_store_stats()["x509_ca"] == 1  # only the private CA


def test_buffered_tls_socket_reads_every_record_there_and_counts_openssl_s_as_pending(
        pki: Pki) -> None:
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(pki.server_cert, pki.server_key)
    a, b = socket.socketpair()  # a send is in the peer's receive buffer when it returns
    client = client_context(MqttTls(ca_file=pki.ca)).wrap_socket(
        a, server_hostname="localhost", do_handshake_on_connect=False)
    server = server_context.wrap_socket(b, server_side=True, do_handshake_on_connect=False)
    try:
        handshake = threading.Thread(target=server.do_handshake)
        handshake.start()
        client.do_handshake()
        handshake.join(5)
        client.setblocking(False)
        for packet in (b"\x30\x05hello", b"\x30\x03abc", b"\x30\x01z"):
            server.sendall(packet)  # a TLS record each, as Mosquitto sends packets
        buffered = BufferedSocket(client)
        assert buffered.recv(1) == b"\x30"  # one wake-up took all three records
        assert buffered.pending() == 14
        assert buffered.recv(100) == b"\x05hello\x30\x03abc\x30\x01z"
        assert buffered.pending() == 0
        with pytest.raises(ssl.SSLWantReadError):  # paho's _sock_recv: "no data yet"
            buffered.recv(1)

        server.sendall(b"\x30\x05hello" + b"\x30\x03abc")  # one record
        wait_for(lambda: select.select([client], [], [], 0)[0] != [], 5)
        assert client.recv(1) == b"\x30"  # read past the wrapper: OpenSSL keeps 11 bytes
        assert buffered.pending() == 11  # which select() cannot see
        assert buffered.recv(1) == b"\x05"
        assert buffered.recv(100) == b"hello\x30\x03abc"
        assert buffered.pending() == 0
    finally:
        client.close()
        server.close()


def test_the_gateway_process_refuses_to_start_on_a_ca_file_it_cannot_read(
        tmp_path: Path) -> None:
    gateway = GatewayProcess(tmp_path / "gateway", mqtt_url="mqtts://127.0.0.1:8883",
                             settings={"mqtt_ca_file": str(tmp_path / "absent-ca.pem")})
    gateway.start(wait_ready=False)
    try:
        wait_for(lambda: gateway.returncode is not None, 60, what="the gateway kept running")
    finally:
        gateway.stop()
    log = gateway.run_log()
    assert gateway.returncode == 2, log
    assert f"mqtt_ca_file {tmp_path / 'absent-ca.pem'}: No such file" in log
    assert "Traceback" not in log
