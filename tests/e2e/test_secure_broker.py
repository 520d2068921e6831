"""The shipped secure broker (deploy/mosquitto/secure/: mosquitto.conf + acl) on a real Mosquitto,
with certificates and passwords made by gateway.certs: who gets in, and what reaches whom.

A subscriber with the gateway's identity (certificate CN `fleetgate`) watches the device topics;
each test asserts that exactly the allowed messages arrive there. A negative is proven with a
fence: after the refused message the same connection publishes an allowed one; the broker
handles one connection's packets in order and queues to a subscriber in order, so once the
fence has arrived the refused message would have arrived before it.
"""

from __future__ import annotations

import ssl
import subprocess
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

import tests.support.factories as f
import tests.support.publisher as frames
from devstack.gateway_process import GatewayProcess
from devstack.secure_mosquitto import SecureMosquitto
from devstack.victoria_metrics import VictoriaMetrics
from devstack.waiting import wait_for
from gateway import certs
from tests.support.receivers import expected_temperatures, vm_account, vm_samples
from tests.support.services import running
from tests.support.tools import system_tool

V5, V311 = MQTTProtocolVersion.MQTTv5, MQTTProtocolVersion.MQTTv311
NOT_AUTHORIZED = 0x87
DEVICE_TOPICS = ["fleet/+/birth", "fleet/+/telemetry", "fleet/+/death"]
TIMEOUT = 10.0


@dataclass(frozen=True)
class Pki:
    paths: certs.CaPaths
    rogue: certs.CaPaths  # another CA, with a `dev-a` of its own
    passwd: Path

    def client(self, name: str) -> tuple[Path, Path]:
        return self.paths.client(name)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    paths = certs.init_ca(root / "ca", ["localhost"], ["127.0.0.1"])
    for name in ("dev-a", "dev-b", "fleetgate", f.device_id(1), f.device_id(2)):
        certs.issue_client(paths.dir, name)
    rogue = certs.init_ca(root / "rogue", ["localhost"], ["127.0.0.1"])
    certs.issue_client(rogue.dir, "dev-a")
    passwd = root / "passwd"
    certs.set_password(passwd, "dev-c", "pw-c")
    certs.set_password(passwd, "fleetgate", "gw-pw")
    certs.set_password(passwd, f.device_id(3), "pw-3")
    return Pki(paths, rogue, passwd)


@pytest.fixture
def broker(tmp_path: Path, pki: Pki) -> Iterator[SecureMosquitto]:
    yield from running(SecureMosquitto(tmp_path / "broker", pki.paths.dir,
                                       passwd_file=pki.passwd))


class Peer:
    """One MQTT connection (paho, own network thread) that records what happens to it."""

    def __init__(self, port: int, *, ca: Path | None, cert: tuple[Path, Path] | None = None,
                 username: str | None = None, password: str | None = None,
                 protocol: MQTTProtocolVersion = V5, client_id: str = "") -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=protocol)
        if ca is not None:  # hostname verification on: the server certificate names 127.0.0.1
            self.client.tls_set(ca_certs=str(ca), certfile=cert and str(cert[0]),
                                keyfile=cert and str(cert[1]))
        if username is not None:
            self.client.username_pw_set(username, password)
        self.port = port
        self.connack: ReasonCode | None = None
        self.connect_error: str = ""
        self.messages: list[tuple[str, bytes]] = []
        self.pubacks: dict[int, ReasonCode] = {}
        self._lock = threading.Lock()
        self._done = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.subacks: set[int] = set()
        self.client.on_subscribe = lambda c, u, mid, codes, props: self.subacks.add(mid)

    def _on_connect(self, c: mqtt.Client, u: object, flags: object, rc: ReasonCode,
                    props: object) -> None:
        self.connack = rc
        self._done.set()

    def _on_disconnect(self, c: mqtt.Client, u: object, flags: object, rc: ReasonCode,
                       props: object) -> None:
        self.connect_error = self.connect_error or f"disconnected: {rc}"
        self._done.set()

    def _on_message(self, c: mqtt.Client, u: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((message.topic, bytes(message.payload)))

    def _on_publish(self, c: mqtt.Client, u: object, mid: int, rc: ReasonCode,
                    props: object) -> None:
        with self._lock:
            self.pubacks[mid] = rc

    def connect(self) -> Peer:
        """Try to connect; `connected` tells whether the broker accepted (never raises)."""
        try:
            self.client.connect("127.0.0.1", self.port, keepalive=30)
        except (OSError, ssl.SSLError) as e:  # the TLS handshake failed inside connect()
            self.connect_error = f"{type(e).__name__}: {e}"
            return self
        self.client.loop_start()
        if not self._done.wait(TIMEOUT):
            self.connect_error = "no CONNACK and no disconnect within the deadline"
        return self

    @property
    def connected(self) -> bool:
        return (self.connack is not None and not self.connack.is_failure
                and self.client.is_connected())

    def expect_connected(self) -> Peer:
        assert self.connected, f"refused: connack={self.connack} {self.connect_error}"
        return self

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> ReasonCode:
        """QoS 1; the broker's PUBACK reason code (3.1.1 has none: always success)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        wait_for(lambda: info.mid in self.pubacks, TIMEOUT, what=f"PUBACK for {topic}")
        return self.pubacks[info.mid]

    def subscribe(self, topics: Sequence[str]) -> None:
        """Returns once the SUBACK is in: whatever is published after that is delivered."""
        result, mid = self.client.subscribe([(t, 1) for t in topics])
        assert result == mqtt.MQTT_ERR_SUCCESS
        wait_for(lambda: mid in self.subacks, TIMEOUT, what=f"SUBACK for {topics}")

    def received(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return list(self.messages)

    def await_message(self, topic: str, payload: bytes) -> None:
        wait_for(lambda: (topic, payload) in self.received(), TIMEOUT,
                 what=f"{topic} {payload!r} never arrived; got {self.received()}")

    def close(self) -> None:
        self.client.disconnect()  # also ends paho's reconnect attempts of a refused peer
        self.client.loop_stop()


class Peers:
    """Devices and the gateway connecting to one broker; all closed at the test's end."""

    def __init__(self, broker: SecureMosquitto, pki: Pki) -> None:
        self.broker, self.pki = broker, pki
        self.made: list[Peer] = []

    def connect(self, name: str | None = None, *, password: str | None = None,
                protocol: MQTTProtocolVersion = V5, cert: tuple[Path, Path] | None = None,
                ca: Path | bool | None = True, port: int | None = None,
                username: str | None = None, subscribe: Sequence[str] = (),
                will: tuple[str, bytes] | None = None, client_id: str = "") -> Peer:
        """With `name` only: mutual TLS with our CA's clients/<name> on the certificate
        listener; with `password`: TLS + username/password on the password listener.
        `ca=None`: plain TCP (no TLS at all)."""
        ca_file = self.pki.paths.ca_cert if ca is True else (ca or None)
        if password is not None:
            peer = Peer(port or self.broker.password_port, ca=ca_file, username=name,
                        password=password, protocol=protocol, client_id=client_id)
        else:
            if cert is None and name is not None:
                cert = self.pki.client(name)
            peer = Peer(port or self.broker.port, ca=ca_file, cert=cert, username=username,
                        protocol=protocol, client_id=client_id)
        if will is not None:
            peer.client.will_set(will[0], will[1], qos=1)
        self.made.append(peer)
        peer.connect()
        if subscribe:
            peer.expect_connected().subscribe(subscribe)
        return peer

    def close(self) -> None:
        for peer in self.made:
            peer.close()


@pytest.fixture
def peers(broker: SecureMosquitto, pki: Pki) -> Iterator[Peers]:
    made = Peers(broker, pki)
    yield made
    made.close()


# --- who gets in


def test_a_device_with_a_certificate_publishes_its_frames(peers: Peers) -> None:
    gateway = peers.connect("fleetgate", subscribe=DEVICE_TOPICS)
    dev_a = peers.connect("dev-a").expect_connected()
    dev_b = peers.connect("dev-b", protocol=V311).expect_connected()
    sent = [("fleet/dev-a/birth", b"a-birth"), ("fleet/dev-a/telemetry", b"a-1"),
            ("fleet/dev-a/death", b"a-death")]
    for topic, payload in sent:
        assert dev_a.publish(topic, payload).value == 0
    assert dev_b.publish("fleet/dev-b/telemetry", b"b-1").value == 0
    gateway.await_message("fleet/dev-b/telemetry", b"b-1")
    gateway.await_message("fleet/dev-a/death", b"a-death")
    assert sorted(gateway.received()) == sorted([*sent, ("fleet/dev-b/telemetry", b"b-1")])


@pytest.mark.parametrize("protocol", [V5, V311])
def test_a_device_with_a_password_publishes_its_frames(peers: Peers,
                                                       protocol: MQTTProtocolVersion) -> None:
    gateway = peers.connect("fleetgate", subscribe=DEVICE_TOPICS)
    dev_c = peers.connect("dev-c", password="pw-c", protocol=protocol).expect_connected()
    assert dev_c.publish("fleet/dev-c/telemetry", b"c-1").value == 0
    gateway.await_message("fleet/dev-c/telemetry", b"c-1")
    assert gateway.received() == [("fleet/dev-c/telemetry", b"c-1")]


def test_the_gateway_may_use_a_password_too(peers: Peers) -> None:
    gateway = peers.connect("fleetgate", password="gw-pw", subscribe=DEVICE_TOPICS)
    dev_a = peers.connect("dev-a").expect_connected()
    dev_a.publish("fleet/dev-a/telemetry", b"a-1")
    gateway.await_message("fleet/dev-a/telemetry", b"a-1")


def test_a_certificate_of_another_ca_fails_the_handshake(peers: Peers, pki: Pki,
                                                         broker: SecureMosquitto) -> None:
    rogue = peers.connect(cert=pki.rogue.client("dev-a"))  # same CN, another CA
    assert not rogue.connected
    assert rogue.connack is None, "the broker must refuse in TLS, before any MQTT"
    wait_for(lambda: "certificate verify failed" in broker.run_log(), TIMEOUT,
             what="the broker's log names the refused certificate")


def test_no_certificate_no_connection_on_the_certificate_listener(
        peers: Peers, broker: SecureMosquitto) -> None:
    for peer in (peers.connect(), peers.connect(username="dev-a"),
                 peers.connect("dev-c", password="pw-c", port=broker.port)):
        assert not peer.connected
        assert peer.connack is None, "refused in TLS, before any MQTT"


def test_a_client_that_does_not_trust_the_broker_does_not_connect(peers: Peers,
                                                                  pki: Pki) -> None:
    """The device side of the handshake: a broker certificate of another CA is refused."""
    peer = peers.connect("dev-a", ca=pki.rogue.ca_cert)
    assert not peer.connected
    assert "CERTIFICATE_VERIFY_FAILED" in peer.connect_error


@pytest.mark.parametrize("protocol", [V5, V311])
@pytest.mark.parametrize(("user", "password"), [("dev-c", "wrong"), ("nobody", "pw-c"),
                                                ("fleetgate", "pw-c")])
def test_a_wrong_password_gets_a_refusing_connack(peers: Peers, protocol: MQTTProtocolVersion,
                                                  user: str, password: str) -> None:
    peer = peers.connect(user, password=password, protocol=protocol)
    assert peer.connack is not None, peer.connect_error
    assert peer.connack.is_failure
    assert not peer.connected


def test_a_plain_tcp_client_gets_no_connack(peers: Peers, broker: SecureMosquitto) -> None:
    for port in (broker.port, broker.password_port):
        for peer in (peers.connect(ca=None, port=port),
                     peers.connect("dev-c", password="pw-c", ca=None, port=port)):
            assert not peer.connected, port
            assert peer.connack is None, port


def test_old_tls_is_refused(broker: SecureMosquitto, pki: Pki) -> None:
    """TLS 1.2 and 1.3 only, on both listeners (a valid client certificate offered)."""
    openssl = system_tool("openssl", "openssl")
    for port in (broker.port, broker.password_port):
        outcome = {}
        for version in ("-tls1_1", "-tls1_2"):
            result = subprocess.run(
                [openssl, "s_client", "-connect", f"127.0.0.1:{port}", version,
                 "-CAfile", str(pki.paths.ca_cert), "-verify_return_error",
                 "-cert", str(pki.client("dev-a")[0]), "-key", str(pki.client("dev-a")[1])],
                input="", capture_output=True, text=True, timeout=TIMEOUT)
            outcome[version] = result.returncode
        assert outcome == {"-tls1_1": 1, "-tls1_2": 0}, port


# --- what reaches whom


@pytest.mark.parametrize("protocol", [V5, V311])
def test_a_device_cannot_publish_for_another(peers: Peers, protocol: MQTTProtocolVersion) -> None:
    gateway = peers.connect("fleetgate", subscribe=DEVICE_TOPICS)
    # It names itself `fleetgate` in CONNECT: on the certificate listener the CN wins.
    dev_a = peers.connect("dev-a", protocol=protocol, username="fleetgate").expect_connected()
    dev_c = peers.connect("dev-c", password="pw-c", protocol=protocol).expect_connected()
    refused = [(dev_a, "fleet/dev-b/telemetry"), (dev_a, "fleet/dev-b/birth"),
               (dev_a, "fleet/_gateway/gw-1/state"), (dev_a, "fleet/dev-a/cmd"),
               (dev_c, "fleet/dev-a/telemetry")]
    for peer, topic in refused:
        reason = peer.publish(topic, b"forged")
        # MQTT 5 says so in the PUBACK; 3.1.1 has no way to, the broker drops it silently.
        assert reason.value == (NOT_AUTHORIZED if protocol == V5 else 0), topic
    dev_a.publish("fleet/dev-a/telemetry", b"fence-a")
    dev_c.publish("fleet/dev-c/telemetry", b"fence-c")
    gateway.await_message("fleet/dev-a/telemetry", b"fence-a")
    gateway.await_message("fleet/dev-c/telemetry", b"fence-c")
    assert sorted(gateway.received()) == [("fleet/dev-a/telemetry", b"fence-a"),
                                          ("fleet/dev-c/telemetry", b"fence-c")]


def test_mosquitto_pub_as_a_device(peers: Peers, pki: Pki, broker: SecureMosquitto) -> None:
    """Another MQTT implementation (libmosquitto, OpenSSL) through the same broker rules."""
    tool = system_tool("mosquitto_pub", "mosquitto-clients")
    gateway = peers.connect("fleetgate", subscribe=DEVICE_TOPICS)

    def pub(topic: str, message: str, *extra: str,
            cert: tuple[Path, Path] = pki.client("dev-b")) -> subprocess.CompletedProcess[str]:
        # Absolute paths: mosquitto_pub 2.0.11 fails on relative --cert/--key paths.
        return subprocess.run(
            [tool, "-h", "127.0.0.1", "-p", str(broker.port),
             "--cafile", str(pki.paths.ca_cert), "--cert", str(cert[0].resolve()),
             "--key", str(cert[1].resolve()), "-q", "1", "-t", topic, "-m", message, *extra],
            capture_output=True, text=True, timeout=TIMEOUT)

    # One process at a time, each waiting for its PUBACK: the broker has queued (or dropped)
    # a message before the next process connects, so the last one is a fence for all.
    forged = pub("fleet/dev-a/telemetry", "forged-by-b", "-V", "5")
    assert "Not authorized" in forged.stderr, forged.stderr
    rogue = pub("fleet/dev-a/telemetry", "rogue", cert=pki.rogue.client("dev-a"))
    assert rogue.returncode != 0
    for version in ("5", "311"):
        result = pub("fleet/dev-b/telemetry", f"b-{version}", "-V", version)
        assert result.returncode == 0, result.stderr
    gateway.await_message("fleet/dev-b/telemetry", b"b-311")
    assert gateway.received() == [("fleet/dev-b/telemetry", b"b-5"),
                                  ("fleet/dev-b/telemetry", b"b-311")]


def test_a_device_reads_only_its_own_commands(peers: Peers) -> None:
    dev_a = peers.connect("dev-a", subscribe=["fleet/dev-b/cmd", "fleet/#", "#",
                                              "fleet/+/telemetry"])
    dev_c = peers.connect("dev-c", password="pw-c", protocol=V311,
                          subscribe=["fleet/dev-b/cmd", "fleet/#", "fleet/dev-c/cmd"])
    dev_b = peers.connect("dev-b").expect_connected()
    gateway = peers.connect("fleetgate").expect_connected()
    dev_b.publish("fleet/dev-b/telemetry", b"b-1")
    dev_b.publish("fleet/dev-b/birth", b"b-birth")
    # The fences last: each device's own command, from the same gateway connection.
    for topic in ("fleet/dev-b/cmd", "fleet/dev-a/cmd", "fleet/dev-c/cmd"):
        assert gateway.publish(topic, topic.encode()).value == 0
    dev_a.await_message("fleet/dev-a/cmd", b"fleet/dev-a/cmd")
    dev_c.await_message("fleet/dev-c/cmd", b"fleet/dev-c/cmd")
    # Through `fleet/#` and `#` alike, a device's own commands are all it gets.
    assert set(dev_a.received()) == {("fleet/dev-a/cmd", b"fleet/dev-a/cmd")}
    assert set(dev_c.received()) == {("fleet/dev-c/cmd", b"fleet/dev-c/cmd")}


def test_devices_read_the_gateway_state(peers: Peers) -> None:
    gateway = peers.connect("fleetgate").expect_connected()
    state = "fleet/_gateway/gw-1/state"
    assert not gateway.publish(state, b"online", retain=True).is_failure
    # Retained: a device connecting later gets it (certificate and password alike).
    dev_a = peers.connect("dev-a", subscribe=["fleet/_gateway/+/state"])
    dev_c = peers.connect("dev-c", password="pw-c", subscribe=[state])
    dev_a.await_message(state, b"online")
    dev_c.await_message(state, b"online")
    # And the gateway reads its own state back.
    gateway.subscribe([state])
    gateway.await_message(state, b"online")


def test_a_device_will_reaches_the_gateway_only_on_its_own_topic(
        peers: Peers, broker: SecureMosquitto) -> None:
    """The death frame is the device's MQTT Will: the ACL holds for it too."""
    gateway = peers.connect("fleetgate", subscribe=DEVICE_TOPICS)
    wills = {name: peers.connect(name, client_id=f"will-{name}",
                                 will=("fleet/dev-a/death", f"will-of-{name}".encode()))
             for name in ("dev-b", "dev-a")}
    for name, peer in wills.items():
        if not peer.connected:
            assert name == "dev-b"  # a broker may refuse a forged Will at CONNECT already
            continue
        # An unclean end (socket closed without DISCONNECT), so the broker sends the Will.
        peer.client.loop_stop()
        sock = peer.client.socket()
        assert sock is not None
        sock.close()
        # The broker has handled the end (and the Will) once it logs it.
        gone = (f"will-{name} closed its connection", f"Socket error on client will-{name}")
        wait_for(lambda: any(line in broker.run_log() for line in gone), TIMEOUT,  # noqa: B023
                 what=f"the broker saw will-{name} go")
    gateway.await_message("fleet/dev-a/death", b"will-of-dev-a")
    fence = peers.connect("dev-a").expect_connected()
    fence.publish("fleet/dev-a/telemetry", b"fence")
    gateway.await_message("fleet/dev-a/telemetry", b"fence")
    assert sorted(gateway.received()) == [("fleet/dev-a/death", b"will-of-dev-a"),
                                          ("fleet/dev-a/telemetry", b"fence")]


# --- with the gateway and a receiver


@pytest.mark.parametrize("gateway_login", ["certificate", "password"])
def test_the_gateway_gets_every_allowed_frame_and_nothing_forged(
        peers: Peers, pki: Pki, broker: SecureMosquitto, victoria_metrics: VictoriaMetrics,
        tmp_path: Path, gateway_login: str) -> None:
    """The real gateway over mqtts:// (its own identity, hostname checked), a real
    VictoriaMetrics: a device's frames arrive, frames forged for another device do not reach
    the gateway, its fleet state or the receiver."""
    if gateway_login == "certificate":
        cert, key = pki.client("fleetgate")
        url, login = broker.url, {"mqtt_cert_file": str(cert), "mqtt_key_file": str(key)}
    else:
        secret = tmp_path / "gateway-password"
        secret.write_text("gw-pw\n")
        url, login = broker.password_url, {"mqtt_username": "fleetgate",
                                           "mqtt_password_file": str(secret)}
    gw = GatewayProcess(tmp_path / "gateway", mqtt_url=url,
                        remote_write_urls=[victoria_metrics.remote_write_url],
                        settings={"mqtt_ca_file": str(pki.paths.ca_cert), **login})
    try:
        gw.start()
        _devices_publish_and_forge(peers, gw, victoria_metrics)
    finally:
        gw.stop()


def _devices_publish_and_forge(peers: Peers, gw: GatewayProcess,
                               victoria_metrics: VictoriaMetrics) -> None:
    base = f.now_ms() - 60_000
    one, two, three = f.device_id(1), f.device_id(2), f.device_id(3)
    dev_1 = peers.connect(one).expect_connected()  # certificate
    dev_3 = peers.connect(three, password="pw-3").expect_connected()  # password
    for peer, index in ((dev_1, 1), (dev_3, 3)):
        for topic, payload in [*frames.births(range(index, index + 1)),
                               *frames.telemetry(range(index, index + 1), range(10), base)]:
            assert peer.publish(topic, payload).value == 0, topic
    # dev-0001 speaks for dev-0002, and for dev-0003 (a known device): refused by the broker.
    forged = [*frames.births(range(2, 3)), *frames.telemetry(range(2, 3), range(10), base),
              *frames.telemetry(range(3, 4), range(10, 20), base)]
    for topic, payload in forged:
        assert dev_1.publish(topic, payload).value == NOT_AUTHORIZED, topic
    # The fence: more of dev-0001's own frames on the same connection.
    for topic, payload in frames.telemetry(range(1, 2), range(10, 15), base):
        dev_1.publish(topic, payload)
    stored = (1 + 15) + (1 + 10)
    wait_for(lambda: gw.metric("fleetgate_frames_received_total") >= stored and gw.caught_up(),
             60, what="the gateway to take and forward every allowed frame")
    assert gw.metric("fleetgate_frames_received_total") == stored
    assert gw.metric("fleetgate_frames_stored_total") == stored
    assert gw.metric("fleetgate_frames_held") == 0
    devices = gw.http.get("/api/v1/devices", headers=gw.auth_headers()).json()["devices"]
    assert sorted(d["device_id"] for d in devices) == [one, three]
    expected = {**expected_temperatures(range(1, 2), range(15)),
                **expected_temperatures(range(3, 4), range(10))}
    assert vm_account(victoria_metrics, "device_temperature_celsius", expected) == (0, 0)
    samples = vm_samples(victoria_metrics, "device_temperature_celsius")
    assert sorted(samples) == [one, three]
    assert two not in samples
    assert len(samples[three]) == 10  # none of the forged seqs 10-19


# --- the shipped files


def _settings(path: Path) -> dict[str, str]:
    lines = [line.split(None, 1) for line in path.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    return {parts[0]: parts[1] if len(parts) > 1 else "" for parts in lines
            if parts[0] not in {"listener", "log_type"}}


def test_the_secure_config_keeps_the_limits_of_the_plain_one() -> None:
    """deploy/mosquitto/secure/mosquitto.conf copies the queue, persistence and size limits of
    deploy/mosquitto/mosquitto.conf: a change to one without the other fails here."""
    from devstack.checkout import SHIPPED_MOSQUITTO_CONF
    from devstack.secure_mosquitto import SHIPPED_SECURE_CONF

    plain, secure = _settings(SHIPPED_MOSQUITTO_CONF), _settings(SHIPPED_SECURE_CONF)
    access = {"allow_anonymous"}
    for key, value in plain.items():
        if key not in access:
            assert secure.get(key) == value, key
    assert "allow_anonymous true" not in SHIPPED_SECURE_CONF.read_text()


def test_devstack_replaces_every_production_path(tmp_path: Path, pki: Pki) -> None:
    broker = SecureMosquitto(tmp_path, pki.paths.dir, passwd_file=pki.passwd)
    rendered = broker.render_conf()
    settings = "\n".join(line for line in rendered.splitlines() if not line.startswith("#"))
    assert "/etc/mosquitto" not in settings
    assert "/var/lib/mosquitto" not in settings
    for line in ("require_certificate true", "use_identity_as_username true",
                 "per_listener_settings true", f"password_file {pki.passwd}",
                 f"cafile {pki.paths.ca_cert}"):
        assert line in rendered.splitlines(), line
    assert rendered.count("allow_anonymous false") == 2
