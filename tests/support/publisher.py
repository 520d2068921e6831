"""A test device fleet's MQTT side: publish prepared frames at QoS 1 and wait for every PUBACK."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

import tests.support.factories as f
from firmware_sim.config import FleetConfig
from firmware_sim.fleet import Fleet, FleetSummary
from gateway.settings import parse_mqtt_url


class Publisher:
    def __init__(self, mqtt_url: str, client_id: str = "test-publisher") -> None:
        host, port, _tls = parse_mqtt_url(mqtt_url)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=MQTTProtocolVersion.MQTTv5)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self._connected = threading.Event()
        self.client.on_connect = lambda c, u, fl, rc, p: self._connected.set()
        self.client.connect(host, port)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise TimeoutError(f"could not connect to {mqtt_url}")

    def publish(self, messages: Iterable[tuple[str, bytes]], timeout: float = 120.0) -> int:
        infos = [self.client.publish(topic, payload, qos=1) for topic, payload in messages]
        for info in infos:
            if info.rc == mqtt.MQTT_ERR_NO_CONN:
                # Published while the broker is away: paho keeps QoS 1 messages and sends them
                # after its automatic reconnect (firmware does the same from its ring buffer),
                # but marks them failed. Mark them pending so the wait below sees the PUBACK.
                info.rc = mqtt.MQTT_ERR_AGAIN
            info.wait_for_publish(timeout)
            if not info.is_published():
                raise TimeoutError(f"message {info.mid} not acknowledged by the broker")
        return len(infos)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def births(devices: range, prefix: str = "fleet") -> list[tuple[str, bytes]]:
    return [(f"{prefix}/{f.device_id(i)}/birth", f.birth_payload(i)) for i in devices]


def telemetry(devices: range, seqs: range, base_ms: int, prefix: str = "fleet",
              **kwargs: object) -> list[tuple[str, bytes]]:
    """Frames in the order a fleet sends them: seq by seq, every device in turn."""
    return [(f"{prefix}/{f.device_id(i)}/telemetry",
             f.telemetry_payload(i, s, base_ms=base_ms, **kwargs))  # type: ignore[arg-type]
            for s in seqs for i in devices]


class PacedFleet(threading.Thread):
    """A fleet publishing from its own thread at a steady pace: one frame per device per round,
    so a test can break things on the main thread while traffic flows."""

    def __init__(self, mqtt_url: str, devices: range, seqs: range, base_ms: int,
                 round_interval_s: float, client_id: str = "paced-fleet") -> None:
        super().__init__(name="paced-fleet", daemon=True)
        self.mqtt_url = mqtt_url
        self.devices = devices
        self.seqs = seqs
        self.base_ms = base_ms
        self.round_interval_s = round_interval_s
        self.client_id = client_id
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with Publisher(self.mqtt_url, client_id=self.client_id) as pub:
                self.sent += pub.publish(births(self.devices))
                next_round = time.monotonic()
                for seq in self.seqs:
                    self.sent += pub.publish(telemetry(self.devices, range(seq, seq + 1),
                                                       self.base_ms))
                    next_round += self.round_interval_s
                    # Pacing a publisher is the one place a sleep is the point.
                    time.sleep(max(0.0, next_round - time.monotonic()))
        except BaseException as exc:
            self.error = exc


class FleetThread:
    """A simulated fleet (firmware_sim) running in a thread until stop()."""

    def __init__(self, config: FleetConfig) -> None:
        self.fleet = Fleet(config)
        self.summary: FleetSummary | None = None
        self._thread = threading.Thread(target=self._run, name="fleet", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.summary = self.fleet.run()

    def stop(self) -> FleetSummary:
        self.fleet.stop()
        self._thread.join(30)
        assert self.summary is not None, "the fleet did not stop within 30 s"
        return self.summary
