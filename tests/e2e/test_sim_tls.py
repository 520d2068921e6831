"""The simulator over TLS: each device connects with its own client certificate to a real
Mosquitto that requires one and takes the certificate's CN as the username (an ACL lets a
user publish only under its own id), and its frames arrive at a subscriber.

The last test is a unit test at the MQTT seam: a scripted TLS broker sends two MQTT packets in
one TLS record, which only the fleet's TLS read path (not epoll) can see.
"""

from __future__ import annotations

import socket
import ssl
import struct
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from device_protocol import (
    FrameKind,
    GatewayState,
    encode_gateway_state,
    gateway_state_topic,
    parse_topic,
)
from devstack import LOOPBACK, Mosquitto, ServiceNotInstalled, wait_for
from firmware_sim.__main__ import main as sim_main
from firmware_sim.config import FleetConfig
from firmware_sim.faults import parse_fault
from firmware_sim.fleet import Fleet
from gateway import certs
from gateway.certs import CaPaths
from tests.support.publisher import FleetThread
from tests.support.tools import system_tool

pytestmark = pytest.mark.e2e

PREFIX = "simtls"


# --- a throw-away PKI ------------------------------------------------------------------------


def make_pki(root: Path, clients: list[str]) -> CaPaths:
    """What `fleetgate certs init` / `issue` make: a CA, a server certificate for 127.0.0.1
    and localhost, and clients/<name>.crt|.key."""
    pki = certs.init_ca(root, ["localhost"], [LOOPBACK])
    for name in clients:
        certs.issue_client(root, name)
    return pki


# --- a broker that wants a certificate, and a subscriber that counts -------------------------


def _write_acl(acl: Path) -> None:
    acl.write_text(
        "user recorder\n"
        f"topic read {PREFIX}/#\n"
        f"pattern write {PREFIX}/%u/birth\n"
        f"pattern write {PREFIX}/%u/telemetry\n"
        f"pattern write {PREFIX}/%u/death\n"
        f"pattern read {PREFIX}/%u/cmd\n"
        f"pattern read {PREFIX}/_gateway/+/state\n")


def secure_broker_conf(pki: CaPaths, acl: Path, password_file: Path | None = None) -> str:
    """Mutual TLS with the certificate's CN as the username; or, given a password file, TLS
    with the username and password the client sends."""
    _write_acl(acl)
    identity = (["require_certificate true", "use_identity_as_username true"]
                if password_file is None else [f"password_file {password_file}"])
    return "\n".join([
        f"cafile {pki.ca_cert}", f"certfile {pki.server_cert}",
        f"keyfile {pki.server_key}", *identity, "allow_anonymous false",
        f"acl_file {acl}"])


class Recorder:
    """A TLS subscriber with its own certificate (user `recorder`), counting telemetry frames
    and births per device."""

    def __init__(self, pki: CaPaths, port: int, password: str | None = None) -> None:
        self.telemetry: Counter[str] = Counter()
        self.births: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="recorder",
                                  protocol=MQTTProtocolVersion.MQTTv5)
        if password is None:
            cert, key = pki.client("recorder")
            self.client.tls_set(ca_certs=str(pki.ca_cert), certfile=str(cert), keyfile=str(key))
        else:
            self.client.tls_set(ca_certs=str(pki.ca_cert))
            self.client.username_pw_set("recorder", password)
        self.client.on_connect = lambda c, *_: c.subscribe(
            [(f"{PREFIX}/+/telemetry", 1), (f"{PREFIX}/+/birth", 1)])
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(LOOPBACK, port)
        self.client.loop_start()
        wait_for(self._subscribed.is_set, 10, what="recorder subscribed over TLS")

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        device_id, kind = parse_topic(msg.topic, PREFIX)
        with self._lock:
            (self.births if kind is FrameKind.BIRTH else self.telemetry)[device_id] += 1

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self.telemetry)

    def births_of(self, device_id: str) -> int:
        with self._lock:
            return self.births[device_id]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


DEVICES = [f"sim-{i:04d}" for i in range(1, 5)]


@pytest.fixture
def pki(tmp_path: Path) -> CaPaths:
    return make_pki(tmp_path / "pki", [*DEVICES, "recorder"])


def started(broker: Mosquitto) -> Mosquitto:
    try:
        return broker.start()
    except ServiceNotInstalled as exc:  # a failure, never a skip (tests/conftest.py)
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def tls_broker(tmp_path: Path, pki: CaPaths) -> Iterator[Mosquitto]:
    broker = started(Mosquitto(tmp_path / "mosquitto", persistence=False,
                               extra_conf=secure_broker_conf(pki, tmp_path / "acl")))
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def recorder(pki: CaPaths, tls_broker: Mosquitto) -> Iterator[Recorder]:
    rec = Recorder(pki, tls_broker.port)
    yield rec
    rec.close()


def test_each_device_connects_with_its_own_certificate(
    pki: CaPaths, tls_broker: Mosquitto, recorder: Recorder, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Through the command line, as the demo runs it. The ACL passes a device's telemetry only
    when the broker took its id from that device's own certificate."""
    argv = ["--mqtt-url", f"mqtts://{LOOPBACK}:{tls_broker.port}", "--tls-ca", str(pki.ca_cert),
            "--tls-cert-dir", str(pki.clients_dir), "--devices", str(len(DEVICES)),
            "--frames", "5", "--interval", "0.05", "--topic-prefix", PREFIX, "--quiet",
            "--seed", "3"]
    assert sim_main(argv) == 0
    assert "published=20" in capsys.readouterr().out  # every frame acknowledged (PUBACK 0)
    wait_for(lambda: recorder.counts() == dict.fromkeys(DEVICES, 5), 10,
             what=f"5 frames from each device; got {recorder.counts()}")


def test_a_device_without_a_valid_certificate_never_gets_in(
    pki: CaPaths, tls_broker: Mosquitto, recorder: Recorder, tmp_path: Path
) -> None:
    """sim-0002's certificate comes from another CA: its handshake is refused, the others'
    frames flow. And plain MQTT to the TLS port gets nowhere."""
    stranger = make_pki(tmp_path / "stranger", ["sim-0002"])
    for path, foreign in zip(pki.client("sim-0002"), stranger.client("sim-0002"), strict=True):
        path.write_bytes(foreign.read_bytes())
    config = FleetConfig(mqtt_url=f"mqtts://{LOOPBACK}:{tls_broker.port}", devices=3,
                         interval_s=0.05, topic_prefix=PREFIX, tls_ca_file=str(pki.ca_cert),
                         tls_cert_dir=str(pki.clients_dir), connect_grace_s=0.2)
    run = FleetThread(config)
    plain = FleetThread(FleetConfig(mqtt_url=tls_broker.url, devices=1, interval_s=0.05,
                                    topic_prefix=PREFIX, device_prefix="plain"))
    try:
        # 15 frames take 0.75 s: well past the grace after which sim-0002 samples anyway.
        wait_for(lambda: all(recorder.counts().get(d, 0) >= 15 for d in ("sim-0001", "sim-0003")),
                 15, what=f"frames of the two valid devices; got {recorder.counts()}")
    finally:
        summary, plain_summary = run.stop(), plain.stop()
    by_id = {d.device_id: d for d in summary.devices}
    assert summary.connected == 2
    assert by_id["sim-0002"].published == 0 and by_id["sim-0002"].buffered > 0
    assert "sim-0002" not in recorder.counts()
    assert (plain_summary.connected, plain_summary.devices[0].published) == (0, 0)
    assert "plain-0001" not in recorder.counts()


def test_a_cut_tls_connection_comes_back_and_replays(
    pki: CaPaths, tls_broker: Mosquitto, recorder: Recorder
) -> None:
    """Fault `flap` drops the TLS connection under the device (a pulled cable): it reconnects
    with a new handshake, is born again and replays what it buffered meanwhile."""
    config = FleetConfig(mqtt_url=f"mqtts://{LOOPBACK}:{tls_broker.port}", devices=1,
                         interval_s=0.02, topic_prefix=PREFIX, tls_ca_file=str(pki.ca_cert),
                         tls_cert_dir=str(pki.clients_dir), faults=(parse_fault("flap=all@0.5"),),
                         seed=4)
    run = FleetThread(config)
    try:
        wait_for(lambda: recorder.births_of("sim-0001") >= 3, 30,
                 what="two reconnects after cuts, each with a birth")
    finally:
        (device,) = run.stop().devices
    assert device.births >= 3 and device.replayed > 0
    # Every frame the broker acknowledged reaches the subscriber (a resend after a cut may
    # arrive twice: QoS 1).
    wait_for(lambda: recorder.counts()["sim-0001"] >= device.published, 10,
             what=f"{device.published} acknowledged frames at the subscriber")


def test_devices_log_in_with_their_own_passwords(pki: CaPaths, tmp_path: Path) -> None:
    """--password-file: TLS without client certificates, username = device id. sim-0003's
    password is wrong: the broker refuses its CONNECT and the others' frames flow."""
    tool = system_tool("mosquitto_passwd", "mosquitto")
    hashed = tmp_path / "passwd"
    hashed.touch()
    passwords = {d: f"pw-{d}-{i}" for i, d in enumerate([*DEVICES, "recorder"])}
    for user, password in passwords.items():
        subprocess.run([tool, "-b", str(hashed), user, password], check=True)
    plain = tmp_path / "device-passwords"
    plain.write_text("".join(f"{d}:{passwords[d]}\n" for d in DEVICES[:2])
                     + "sim-0003:not-its-password\n")
    broker = started(Mosquitto(tmp_path / "mosquitto", persistence=False,
                               extra_conf=secure_broker_conf(pki, tmp_path / "acl", hashed)))
    try:
        recorder = Recorder(pki, broker.port, passwords["recorder"])
        run = FleetThread(FleetConfig(
            mqtt_url=f"mqtts://{LOOPBACK}:{broker.port}", devices=3, interval_s=0.05,
            topic_prefix=PREFIX, tls_ca_file=str(pki.ca_cert), password_file=str(plain)))
        try:
            wait_for(lambda: all(recorder.counts().get(d, 0) >= 5 for d in DEVICES[:2]), 15,
                     what=f"frames of the devices with a right password; {recorder.counts()}")
        finally:
            summary = run.stop()
            recorder.close()
    finally:
        broker.stop()
    assert summary.connected == 2
    assert "sim-0003" not in recorder.counts()


# --- a TLS record holding two MQTT packets ------------------------------------------------------


def _read_packet(sock: ssl.SSLSocket) -> tuple[int, bytes]:
    """One MQTT packet: (packet type, body); (0, b"") at EOF."""
    head = sock.recv(1)
    if not head:
        return 0, b""
    length, shift = 0, 0
    while True:
        byte = sock.recv(1)[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            return 0, b""
        body += chunk
    return head[0] >> 4, body


class ScriptedTlsBroker(threading.Thread):
    """Accepts one MQTT v5 client over TLS, answers its CONNECT with a CONNACK and a retained
    "gateway offline" PUBLISH in ONE write (one TLS record), then only listens: it never sends
    another byte, so nothing else would make the client read again. Records what the client
    publishes."""

    def __init__(self, pki: CaPaths) -> None:
        super().__init__(name="scripted-tls-broker", daemon=True)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(pki.server_cert, pki.server_key)
        self.listener = socket.create_server((LOOPBACK, 0))
        self.port = self.listener.getsockname()[1]
        self.published: list[str] = []

    def run(self) -> None:
        with self.listener:
            raw, _ = self.listener.accept()
        try:
            self._serve(raw)
        except OSError:
            pass  # the client went away mid-packet: the test reads what was recorded

    def _serve(self, raw: socket.socket) -> None:
        with self.context.wrap_socket(raw, server_side=True) as sock:
            assert _read_packet(sock)[0] == 1  # CONNECT
            topic = gateway_state_topic(PREFIX, "gw1").encode()
            payload = encode_gateway_state(GatewayState(online=False, time_ms=1))
            body = struct.pack("!H", len(topic)) + topic + b"\x00" + payload  # no properties
            connack = bytes([0x20, 3, 0, 0, 0])
            publish = bytes([0x31, len(body)]) + body  # QoS 0, retained
            sock.sendall(connack + publish)
            while (packet := _read_packet(sock))[0]:
                if packet[0] == 3:
                    (size,) = struct.unpack("!H", packet[1][:2])
                    self.published.append(packet[1][2:2 + size].decode())


def test_packets_decrypted_in_one_record_are_all_read(pki: CaPaths) -> None:
    """The gateway's offline state, in the same record as the CONNACK, must reach the device
    at once: it buffers its frames instead of publishing them. epoll cannot report it: the
    bytes left the kernel with the CONNACK and wait inside the SSL object."""
    broker = ScriptedTlsBroker(pki)
    broker.start()
    config = FleetConfig(mqtt_url=f"mqtts://{LOOPBACK}:{broker.port}", devices=1,
                         interval_s=0.02, duration_s=1.0, topic_prefix=PREFIX,
                         tls_ca_file=str(pki.ca_cert), stop_timeout_s=0.5)
    summary = Fleet(config).run()
    (device,) = summary.devices
    assert f"{PREFIX}/sim-0001/birth" in broker.published  # it was connected
    assert f"{PREFIX}/sim-0001/telemetry" not in broker.published
    assert device.buffered >= 20  # ~50 frames in 1 s, all kept for later
