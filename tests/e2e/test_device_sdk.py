"""The Python SDK end to end: a `fleetgate_device.Device` publishes through a real Mosquitto and
the gateway into VictoriaMetrics. The broker is stopped in the middle: the device rings its
frames, and after the broker is back on the same port it sends a birth and replays them with
h=true, keeping their seq and timestamps. A metric declared mid-boot while online (a re-birth)
and one declared during the outage arrive too. Every frame's samples reach VictoriaMetrics
exactly once, at the time the frame was built. And a file ring's frames, after a restart, go
through the gateway under the boot they were built in.
"""

from __future__ import annotations

import itertools
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from device_protocol import decode_telemetry
from devstack import LOOPBACK, Mosquitto, VictoriaMetrics, wait_for
from fleetgate_device import Device, Sample
from tests.conftest import GatewayFactory
from tests.e2e.test_sim_tls import PREFIX as TLS_PREFIX
from tests.e2e.test_sim_tls import Recorder as TlsRecorder
from tests.e2e.test_sim_tls import make_pki, secure_broker_conf, started
from tests.support.receivers import vm_samples
from tests.support.tools import system_tool

pytestmark = pytest.mark.e2e

DEVICE = "py-sdk-0001"
INTERVAL_S = 0.1
OUTAGE_FRAMES = 10


class Recorder:
    """A QoS 1 subscriber with a persistent session (kept across the broker's restart): each
    seq's frame time and h flags, and when it first arrived."""

    def __init__(self, port: int) -> None:
        self.frames: dict[int, tuple[int, set[bool]]] = {}
        self.arrived: dict[int, float] = {}
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="py-sdk-recorder",
                                  clean_session=False, protocol=MQTTProtocolVersion.MQTTv311)
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.client.on_connect = lambda c, *_: c.subscribe(f"fleet/{DEVICE}/telemetry", 1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(LOOPBACK, port)
        self.client.loop_start()
        wait_for(subscribed.is_set, 10, what="recorder subscribed")

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        raw = decode_telemetry(bytes(msg.payload))
        with self._lock:
            self.frames.setdefault(raw.seq, (raw.time_ms, set()))[1].add(raw.historical)
            self.arrived.setdefault(raw.seq, time.time() * 1000)

    def snapshot(self) -> dict[int, tuple[int, set[bool]]]:
        with self._lock:
            return {seq: (t, set(flags)) for seq, (t, flags) in self.frames.items()}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def recorder(mosquitto: Mosquitto) -> Iterator[Recorder]:
    rec = Recorder(mosquitto.port)
    yield rec
    rec.close()


def test_device_rides_out_a_broker_restart_every_sample_once_at_its_time(
        mosquitto: Mosquitto, victoria_metrics: VictoriaMetrics,
        gateway_factory: GatewayFactory, recorder: Recorder) -> None:
    gw = gateway_factory(mosquitto, victoria_metrics)
    frame_no = itertools.count()
    # One sample from `collect` per frame, numbering the frames: a lost or doubled frame
    # shows as a missing or doubled value.
    device = Device(DEVICE, mosquitto.url, hw="raspberry-pi-5", fw="1.4.2",
                    interval_s=INTERVAL_S, labels={"site": "lab"}, reconnect_max_s=1,
                    collect=lambda: [Sample("sdk_demo_frame", float(next(frame_no)))])
    temp = device.gauge("sdk_demo_temp_c")
    temp.set(41.5, sensor="cpu")
    device.start()
    try:
        wait_for(lambda: device.core.stats.live >= 5, 10, what="5 frames live")
        device.counter("sdk_demo_late_total").inc(3)  # declared mid-boot: a re-birth
        wait_for(lambda: device.core.stats.live >= 10, 10, what="10 frames live")
        mosquitto.stop()  # SIGTERM: the broker saves its sessions, as in a planned restart
        wait_for(lambda: device.core.waiting >= OUTAGE_FRAMES // 2, 10, what="frames ringed")
        device.histogram("sdk_demo_outage_ms", buckets=(1, 10)).observe(4)  # declared offline
        wait_for(lambda: device.core.waiting >= OUTAGE_FRAMES, 10, what="frames ringed")
        mosquitto.start()  # same port, same persistence dir
        wait_for(lambda: device.core.waiting == 0 and device.core.in_flight == 0
                 and device.core.stats.live >= device.core.stats.ringed + 15, 20,
                 what="the ring replayed, and live frames after it")
    finally:
        device.stop()
    built = device.core.seq
    stats = device.core.stats
    assert stats.ringed >= OUTAGE_FRAMES and stats.dropped == 0
    assert stats.replayed == stats.ringed and stats.live + stats.ringed == built

    # On the wire: the ringed frames went once with h=true, keeping their build time.
    wait_for(lambda: set(recorder.snapshot()) == set(range(built)), 15,
             what=f"all {built} seqs at the subscriber")
    frames = recorder.snapshot()
    replayed = {seq for seq, (_, flags) in frames.items() if True in flags}
    assert len(replayed) == stats.replayed
    assert all(flags == {True} for seq, (_, flags) in frames.items() if seq in replayed)
    # Each frame keeps the time it was built: increasing with seq, one interval apart, and the
    # first replayed one arrived after the whole outage.
    times = [frames[seq][0] for seq in range(built)]
    assert times == sorted(times)
    first = min(replayed)
    assert recorder.arrived[first] - frames[first][0] >= OUTAGE_FRAMES * INTERVAL_S * 1000 - 50

    def received() -> int:
        detail = gw.http.get(f"/api/v1/devices/{DEVICE}").json()
        return int(detail["completeness"]["received"])
    wait_for(lambda: received() == built and gw.caught_up(), 20,
             what=f"{built} frames stored and forwarded")
    # VictoriaMetrics: the frame-number gauge once per frame, each at its frame's own time.
    expected = sorted((t, float(seq)) for seq, (t, _) in frames.items())
    wait_for(lambda: len(vm_samples(victoria_metrics, "sdk_demo_frame").get(DEVICE, []))
             >= built, 10, what="every frame's sample in VictoriaMetrics")
    assert sorted(vm_samples(victoria_metrics, "sdk_demo_frame")[DEVICE]) == expected
    temps = vm_samples(victoria_metrics, "sdk_demo_temp_c")[DEVICE]
    assert len(temps) == built and {v for _, v in temps} == {41.5}
    late = vm_samples(victoria_metrics, "sdk_demo_late_total")[DEVICE]
    assert late and {v for _, v in late} == {3.0}
    outage = vm_samples(victoria_metrics, "sdk_demo_outage_ms_bucket")[DEVICE]
    assert outage and {v for _, v in outage} == {0.0, 1.0}
    rows = victoria_metrics.export(f'{{__name__="sdk_demo_temp_c",device_id="{DEVICE}"}}')
    assert {(r["metric"]["site"], r["metric"]["sensor"]) for r in rows} == {("lab", "cpu")}


def test_a_file_ring_replays_a_past_boot_through_the_gateway_after_a_restart(
        mosquitto: Mosquitto, victoria_metrics: VictoriaMetrics,
        gateway_factory: GatewayFactory, tmp_path: Path) -> None:
    """A device that never reached the broker rings frames in its file and restarts; the new
    process (a new boot) replays them under the old boot, after the old boot's birth: the
    gateway stores and forwards them, and the device stays on its new boot."""
    gw = gateway_factory(mosquitto, victoria_metrics)
    ring = tmp_path / "ring"
    numbers = itertools.count(100)
    old = Device(DEVICE, "mqtt://127.0.0.1:1", hw="jetson", fw="1", ring_path=ring,
                 collect=lambda: [Sample("sdk_demo_frame", float(next(numbers)))])
    for _ in range(3):
        old.publish_now()  # no broker there: into the file
    old.stop()

    new = Device(DEVICE, mosquitto.url, hw="jetson", fw="1", interval_s=0.1, ring_path=ring,
                 collect=lambda: [Sample("sdk_demo_frame", float(next(numbers)))])
    new.start()
    try:
        wait_for(lambda: new.core.stats.replayed == 3 and new.core.in_flight == 0
                 and new.core.stats.live >= 3, 10, what="the old boot replayed")
    finally:
        new.stop()

    def boots() -> dict[int, int]:
        detail = gw.http.get(f"/api/v1/devices/{DEVICE}").json()
        return {b["boot"]: b["received"] for b in detail["completeness"]["boots"]}
    wait_for(lambda: boots() == {old.core.boot: 3, new.core.boot: new.core.seq}
             and gw.caught_up(), 15, what="both boots' frames stored and forwarded")
    assert gw.http.get(f"/api/v1/devices/{DEVICE}").json()["boot"] == new.core.boot  # current
    values = sorted(v for _, v in vm_samples(victoria_metrics, "sdk_demo_frame")[DEVICE])
    assert values[:3] == [100.0, 101.0, 102.0] and len(values) == 3 + new.core.seq
    assert len(ring.read_bytes()) < 4096  # acknowledged replays are gone from the file


def test_tls_with_the_devices_own_certificate_and_a_password_file(tmp_path: Path) -> None:
    """mqtts:// with the device's own certificate: the broker takes the user from its CN and
    the ACL lets it publish only under its own id, so frames at the recorder prove the
    identity. Then the same broker's TLS with a password from a file instead."""
    pki = make_pki(tmp_path / "pki", ["py-tls-01", "recorder"])
    broker = started(Mosquitto(tmp_path / "mosquitto", persistence=False,
                               extra_conf=secure_broker_conf(pki, tmp_path / "acl")))
    recorder = TlsRecorder(pki, broker.port)
    cert, key = pki.client("py-tls-01")
    device = Device("py-tls-01", f"mqtts://{LOOPBACK}:{broker.port}", hw="jetson", fw="1",
                    interval_s=0.05, topic_prefix=TLS_PREFIX, ca_file=str(pki.ca_cert),
                    cert_file=str(cert), key_file=str(key))
    device.gauge("g").set(1)
    try:
        device.start()
        wait_for(lambda: recorder.counts().get("py-tls-01", 0) >= 3, 10,
                 what="frames over mutual TLS")
    finally:
        device.stop()
        recorder.close()
        broker.stop()
    assert recorder.births_of("py-tls-01") >= 1

    secret = "pw-" + "x" * 20
    password_file = tmp_path / "py-tls-02.pw"
    password_file.write_text(secret + "\n")
    passwords = tmp_path / "passwd"
    passwords.write_text(f"py-tls-02:{secret}\nrecorder:{secret}\n")
    subprocess.run([system_tool("mosquitto_passwd", "mosquitto"), "-U", str(passwords)],
                   check=True, timeout=30)
    broker = started(Mosquitto(tmp_path / "mosquitto2", persistence=False,
                               extra_conf=secure_broker_conf(pki, tmp_path / "acl2",
                                                             password_file=passwords)))
    recorder = TlsRecorder(pki, broker.port, password=secret)
    device = Device("py-tls-02", f"mqtts://{LOOPBACK}:{broker.port}", hw="jetson", fw="1",
                    interval_s=0.05, topic_prefix=TLS_PREFIX, ca_file=str(pki.ca_cert),
                    password_file=str(password_file))  # the username defaults to the id
    device.gauge("g").set(1)
    try:
        device.start()
        wait_for(lambda: recorder.counts().get("py-tls-02", 0) >= 3, 10,
                 what="frames over TLS with a password")
    finally:
        device.stop()
        recorder.close()
        broker.stop()
