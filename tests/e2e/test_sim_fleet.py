"""The fleet against a real Mosquitto, watched by a plain paho subscriber.

Each test uses its own broker (the `mosquitto` fixture), so topic prefixes and device ids need
not be unique across tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device_protocol import (
    Birth,
    Command,
    FrameKind,
    GatewayState,
    InvalidTopic,
    RawTelemetry,
    cmd_topic,
    decode_birth,
    decode_death,
    decode_telemetry,
    encode_command,
    encode_gateway_state,
    gateway_state_topic,
    parse_topic,
)
from devstack import Mosquitto, wait_for
from firmware_sim.config import FleetConfig
from firmware_sim.ledger import FrameKey, FrameLedger
from tests.support.publisher import FleetThread

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
PREFIX = "simtest"


@dataclass(frozen=True, slots=True)
class Seen:
    device_id: str
    kind: FrameKind
    payload: bytes


class Recorder:
    """Subscribes to everything under PREFIX and keeps it, in arrival order.

    A persistent session (clean_start=False + session expiry), so that frames published while
    the recorder itself reconnects after a broker restart are queued for it, not lost to it.
    """

    def __init__(self, broker: Mosquitto) -> None:
        self._lock = threading.Lock()
        self._seen: list[Seen] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="recorder", protocol=MQTTProtocolVersion.MQTTv5
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 1)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect(broker.host, broker.port, clean_start=False, properties=props)
        self.client.loop_start()
        wait_for(self._subscribed.is_set, 10, what="recorder subscribed")

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe(f"{PREFIX}/#", qos=1)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            device_id, kind = parse_topic(msg.topic, PREFIX)
        except InvalidTopic:
            return  # the gateway state topic
        with self._lock:
            self._seen.append(Seen(device_id, kind, bytes(msg.payload)))

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _of(self, kind: FrameKind) -> list[Seen]:
        with self._lock:
            return [s for s in self._seen if s.kind == kind]

    def births(self) -> dict[str, list[Birth]]:
        out: dict[str, list[Birth]] = defaultdict(list)
        for s in self._of(FrameKind.BIRTH):
            out[s.device_id].append(decode_birth(s.payload))
        return out

    def telemetry(self) -> dict[str, list[RawTelemetry]]:
        out: dict[str, list[RawTelemetry]] = defaultdict(list)
        for s in self._of(FrameKind.TELEMETRY):
            out[s.device_id].append(decode_telemetry(s.payload))
        return out

    def deaths(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = defaultdict(list)
        for s in self._of(FrameKind.DEATH):
            out[s.device_id].append(decode_death(s.payload).boot)
        return out

    def keys(self) -> set[FrameKey]:
        return {
            FrameKey(device, f.boot, f.seq)
            for device, frames in self.telemetry().items()
            for f in frames
        }


@pytest.fixture
def recorder(mosquitto: Mosquitto) -> Iterator[Recorder]:
    rec = Recorder(mosquitto)
    yield rec
    rec.close()


def sim_command(url: str, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "firmware_sim",
        "--mqtt-url",
        url,
        "--topic-prefix",
        PREFIX,
        *args,
    ]


def sim_env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


def test_cli_fleet_publishes_births_frames_and_deaths(
    mosquitto: Mosquitto, recorder: Recorder, tmp_path: Path
) -> None:
    summary_path = tmp_path / "summary.json"
    args = ["--devices", "5", "--frames", "10", "--interval", "0.05", "--seed", "7", "--quiet"]
    proc = subprocess.run(
        sim_command(mosquitto.url, *args, "--summary-json", str(summary_path)),
        env=sim_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "published=50" in proc.stdout
    devices = [f"sim-{i:04d}" for i in range(1, 6)]
    wait_for(lambda: len(recorder.deaths()) == 5, 10, what="a death from every device")

    births, telemetry, deaths = recorder.births(), recorder.telemetry(), recorder.deaths()
    assert sorted(births) == sorted(telemetry) == sorted(deaths) == devices
    profiles = [dict(births[d][0].labels)["profile"] for d in devices]
    assert profiles == ["liquid-edge", "audio-nets", "tiny-llm", "edge-tpu", "photon"]
    for d in devices:
        (birth,) = births[d]
        assert [f.seq for f in telemetry[d]] == list(range(10))  # in order, no gaps, no extras
        assert {f.boot for f in telemetry[d]} == {birth.boot}
        assert not any(f.historical for f in telemetry[d])
        assert deaths[d] == [birth.boot]  # the clean death; the Will was not fired

    summary = json.loads(summary_path.read_text())
    assert (summary["published"], summary["births"], summary["deaths"]) == (50, 5, 5)
    assert FrameLedger.keys_from_ranges(summary["ledger"]) == recorder.keys()


def test_gateway_offline_buffers_then_replays_and_rebirth_on_command(
    mosquitto: Mosquitto, recorder: Recorder
) -> None:
    config = FleetConfig(
        mqtt_url=mosquitto.url, devices=3, interval_s=0.05, seed=1, topic_prefix=PREFIX
    )
    run = FleetThread(config)
    state_topic = gateway_state_topic(PREFIX, config.gateway_id)
    try:
        wait_for(lambda: len(recorder.telemetry()) == 3, 10, what="live telemetry")
        recorder.publish(state_topic, encode_gateway_state(GatewayState(False, 0)), retain=True)
        wait_for(
            lambda: all(d.buffered >= 5 for d in run.fleet.summary().devices),
            10,
            what="every device buffering while the gateway is offline",
        )
        recorder.publish(cmd_topic(PREFIX, "sim-0002"), encode_command(Command(rebirth=True)))
        wait_for(lambda: len(recorder.births()["sim-0002"]) == 2, 10, what="rebirth")

        recorder.publish(state_topic, encode_gateway_state(GatewayState(True, 0)), retain=True)
        wait_for(
            lambda: all(d.replayed == d.buffered for d in run.fleet.summary().devices),
            10,
            what="the ring replayed",
        )
    finally:
        summary = run.stop()
    wait_for(lambda: len(recorder.deaths()) == 3, 10, what="deaths on stop")

    assert recorder.keys() == set(run.fleet.ledger.keys())  # everything published arrived
    assert summary.total("dropped") == summary.total("unsent") == 0
    assert summary.deaths == 3
    for device, frames in recorder.telemetry().items():
        replayed = [f.seq for f in frames if f.historical]
        stats = next(d for d in summary.devices if d.device_id == device)
        assert len(replayed) == stats.replayed >= 5
        assert replayed == list(range(replayed[0], replayed[0] + len(replayed)))  # oldest first
        births = recorder.births()[device]
        assert {b.boot for b in births} == {f.boot for f in frames}


def test_broker_restart_buffers_and_loses_nothing(mosquitto: Mosquitto, recorder: Recorder) -> None:
    config = FleetConfig(
        mqtt_url=mosquitto.url, devices=2, interval_s=0.05, seed=2, topic_prefix=PREFIX
    )
    run = FleetThread(config)
    try:
        wait_for(lambda: len(recorder.telemetry()) == 2, 10, what="live telemetry")
        mosquitto.stop()
        wait_for(
            lambda: all(d.buffered >= 3 for d in run.fleet.summary().devices),
            10,
            what="devices buffering while the broker is down",
        )
        mosquitto.start()
        wait_for(
            lambda: (
                all(d.replayed == d.buffered for d in run.fleet.summary().devices)
                and recorder.keys() >= run.fleet.ledger.keys()
            ),
            20,
            what="reconnect and replay",
        )
    finally:
        summary = run.stop()
    wait_for(lambda: recorder.keys() >= run.fleet.ledger.keys(), 10, what="the last frames")
    assert summary.total("dropped") == 0
    assert summary.total("replayed") >= 6
    for device, births in recorder.births().items():
        assert len(births) >= 2, f"{device} re-announced itself after reconnecting"


def test_sigterm_stops_cleanly_with_deaths(mosquitto: Mosquitto, recorder: Recorder) -> None:
    proc = subprocess.Popen(
        sim_command(mosquitto.url, "--devices", "3", "--interval", "0.05", "--seed", "3"),
        env=sim_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: len(recorder.telemetry()) == 3, 20, what="telemetry from every device")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "deaths=3" in out
    wait_for(lambda: len(recorder.deaths()) == 3, 10, what="deaths after SIGTERM")
    births = recorder.births()
    assert {d: [b.boot for b in births[d]] for d in births} == dict(recorder.deaths())
    assert "sim: 3 devices" in err  # the start line; progress goes to stderr


def test_killed_fleet_dies_through_its_wills(mosquitto: Mosquitto, recorder: Recorder) -> None:
    proc = subprocess.Popen(
        sim_command(mosquitto.url, "--devices", "2", "--interval", "0.05", "--quiet"),
        env=sim_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: len(recorder.telemetry()) == 2, 20, what="telemetry from every device")
    finally:
        proc.kill()  # no chance to publish deaths: only the Wills can tell
        proc.wait()
    wait_for(lambda: len(recorder.deaths()) == 2, 10, what="the Wills")
    births = recorder.births()
    assert {d: [b.boot for b in births[d]] for d in births} == dict(recorder.deaths())
