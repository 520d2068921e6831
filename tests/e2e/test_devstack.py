"""The devstack launchers run real services that carry real traffic."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from devstack import (
    Mosquitto,
    Prometheus,
    ServiceFailed,
    ServiceNotInstalled,
    VictoriaMetrics,
    wait_for,
)

pytestmark = pytest.mark.e2e

TIMEOUT = 10.0


class _Subscriber:
    """A paho 2.x MQTT v5 client that records what it receives."""

    def __init__(self, broker: Mosquitto, client_id: str, *, session_expiry_s: int = 0) -> None:
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.broker = broker
        self.session_expiry_s = session_expiry_s
        self.received: list[mqtt.MQTTMessage] = []
        self.session_present: bool | None = None
        self.subscribed = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda _c, _u, msg: self.received.append(msg)
        self.client.on_subscribe = lambda *_args: self.subscribed.set()

    def _on_connect(self, _c: object, _u: object, flags: mqtt.ConnectFlags, *_rest: object) -> None:
        self.session_present = flags.session_present

    def connect(self, *, clean_start: bool) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.session_expiry_s
        self.session_present = None
        self.client.connect(
            self.broker.host, self.broker.port, clean_start=clean_start, properties=props
        )
        self.client.loop_start()
        wait_for(lambda: self.session_present is not None, TIMEOUT, what="CONNACK")

    def subscribe(self, topic: str) -> None:
        self.subscribed.clear()
        self.client.subscribe(topic, qos=1)
        assert self.subscribed.wait(TIMEOUT), "no SUBACK"

    def disconnect(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def publisher(mosquitto: Mosquitto) -> Iterator[mqtt.Client]:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pub", protocol=mqtt.MQTTv5)
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    yield client
    client.disconnect()
    client.loop_stop()


def _publish_acked(client: mqtt.Client, topic: str, payload: bytes) -> None:
    """QoS 1 publish that returns once the broker has PUBACKed it (i.e. accepted it)."""
    info = client.publish(topic, payload, qos=1)
    info.wait_for_publish(TIMEOUT)
    assert info.is_published()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_mosquitto_qos1_round_trip(mosquitto: Mosquitto, publisher: mqtt.Client) -> None:
    sub = _Subscriber(mosquitto, "round-trip")
    sub.connect(clean_start=True)
    sub.subscribe("fleet/+/telemetry")

    _publish_acked(publisher, "fleet/dev-1/telemetry", b"\x81\xa1k\x01")

    wait_for(lambda: len(sub.received) == 1, TIMEOUT, what="message delivered")
    msg = sub.received[0]
    assert (msg.topic, msg.payload, msg.qos) == ("fleet/dev-1/telemetry", b"\x81\xa1k\x01", 1)
    sub.disconnect()
    assert mosquitto.url == f"mqtt://127.0.0.1:{mosquitto.port}"


def test_persistent_session_and_offline_queue_survive_broker_restart(
    mosquitto: Mosquitto, publisher: mqtt.Client
) -> None:
    # More than Mosquitto's default max_queued_messages (1000): all of them arriving proves
    # the shipped queue limit is in force, not only persistence.
    queued = 1500
    gateway = _Subscriber(mosquitto, "fleetgate-test", session_expiry_s=3600)
    gateway.connect(clean_start=False)
    gateway.subscribe("fleet/+/telemetry")
    gateway.disconnect()

    for i in range(queued):
        _publish_acked(publisher, "fleet/dev-7/telemetry", i.to_bytes(4, "big"))
    publisher.disconnect()
    publisher.loop_stop()

    old_pid, port = mosquitto.pid, mosquitto.port
    assert old_pid is not None
    mosquitto.restart()
    assert not _alive(old_pid)
    assert mosquitto.pid != old_pid and mosquitto.port == port

    gateway.connect(clean_start=False)  # no new SUBSCRIBE: the session must bring it back
    assert gateway.session_present is True
    wait_for(lambda: len(gateway.received) >= queued, TIMEOUT, what=f"{queued} queued frames")
    payloads = [int.from_bytes(m.payload, "big") for m in gateway.received]
    assert payloads == list(range(queued))
    gateway.disconnect()


def test_mosquitto_stop_ends_the_process(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "mq", persistence=False).start()
    pid = broker.pid
    assert pid is not None and broker.is_running
    broker.stop()
    assert not broker.is_running and not _alive(pid)


def test_bad_config_fails_with_log_tail(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "mq", extra_conf="max_packet_size 0")
    with pytest.raises(ServiceFailed, match="Invalid max_packet_size"):
        broker.start()
    assert not broker.is_running


def test_missing_binary_says_how_to_install(tmp_path: Path) -> None:
    class NotHere(VictoriaMetrics):
        binary_names = ("/nonexistent/victoria-metrics",)

    with pytest.raises(ServiceNotInstalled, match=r"install-system-deps\.sh"):
        NotHere(tmp_path / "vm").start()


def test_prometheus_ready_with_remote_write_receiver(prometheus_session: Prometheus) -> None:
    prom = prometheus_session
    assert httpx.get(f"{prom.url}/-/ready").status_code == 200
    flags = httpx.get(f"{prom.url}/api/v1/status/flags").json()["data"]
    assert flags["web.enable-remote-write-receiver"] == "true"
    assert flags["web.enable-lifecycle"] == "true"
    config = httpx.get(f"{prom.url}/api/v1/status/config").json()["data"]["yaml"]
    assert "out_of_order_time_window: 30m" in config
    [sample] = prom.query("vector(42)")
    assert sample["value"][1] == "42"
    assert prom.remote_write_url == f"{prom.url}/api/v1/write"


def test_prometheus_renders_scrape_targets(tmp_path: Path) -> None:
    target = "127.0.0.1:18080"
    with Prometheus(tmp_path / "prom", scrape_targets=[target], out_of_order_window="1h") as prom:
        # The config Prometheus loaded (it discovers targets only seconds later).
        config = httpx.get(f"{prom.url}/api/v1/status/config").json()["data"]["yaml"]
    assert f"- {target}" in config
    assert "job_name: fleetgate" in config
    assert "out_of_order_time_window: 1h" in config


def test_victoria_metrics_import_then_export(victoria_metrics_session: VictoriaMetrics) -> None:
    vm = victoria_metrics_session
    assert httpx.get(f"{vm.url}/health").status_code == 200
    name = f"devstack_probe_{uuid.uuid4().hex[:12]}"
    old_ms = 1_000_000_000_000  # 2001: kept only thanks to -retentionPeriod=100y
    now_ms = int(time.time() * 1000)
    body = f'{name}{{case="import"}} 3.5 {old_ms}\n{name}{{case="import"}} 4.5 {now_ms}\n'
    response = httpx.post(f"{vm.url}/api/v1/import/prometheus", content=body)
    assert response.status_code == 204, response.text

    [series] = vm.export(name)
    assert series["metric"] == {"__name__": name, "case": "import"}
    assert series["timestamps"] == [old_ms, now_ms]
    assert series["values"] == [3.5, 4.5]
    [latest] = vm.query(f'{name}{{case="import"}}', time=now_ms / 1000)
    assert float(latest["value"][1]) == 4.5
