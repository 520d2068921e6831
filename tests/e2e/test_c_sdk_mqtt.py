"""The C SDK on the wire: its libmosquitto example (sdk/c/examples/mosquitto_device.c), built
with the host compiler, publishes through a real Mosquitto and the gateway into
VictoriaMetrics. The broker is stopped in the middle: the device keeps building frames into the
SDK's ring, and after the broker is back on the same port it sends a birth and replays them
with h=true, paced by PUBACKs. Every frame's samples must reach VictoriaMetrics exactly once.
And the same example over mutual TLS to the shipped secure broker configuration; and the RTOS
sketch still compiles against the SDK's header.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from device_protocol import decode_telemetry
from devstack import LOOPBACK, Mosquitto, VictoriaMetrics, wait_for
from devstack.secure_mosquitto import SecureMosquitto
from gateway import certs
from tests.conftest import GatewayFactory
from tests.support.receivers import vm_samples
from tests.support.services import running
from tests.support.tools import system_tool

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "sdk" / "c" / "examples"
DEVICE = "c-sdk-0001"
PREFIX = "fleet"  # the gateway's default topic_prefix
FRAMES = 60
INTERVAL_MS = 50
OUTAGE_FRAMES = 15  # frames the device must build into its ring while the broker is away


def build_example(out: Path) -> Path:
    """`make -C sdk/c/examples device` into out, with ASan and UBSan: the SDK and the example
    run under real traffic, a memory error ends the device with a report. A missing compiler
    or libmosquitto-dev fails under CI=true (tests/support/tools.py), as every missing tool
    does."""
    system_tool("cc", "gcc")
    make = system_tool("make", "make")
    if not Path("/usr/include/mosquitto.h").exists():
        message = ("libmosquitto headers missing: run `make install` "
                   "(Debian package libmosquitto-dev)")
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    done = subprocess.run([make, "-C", str(EXAMPLES), f"BUILD={out}", "SANITIZE=1", "device"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"building the example failed:\n{done.stdout}{done.stderr}"
    return out / "mosquitto_device"


class DeviceRun:
    """The example as a child process; its -v lines on stderr ("frame built=3 ... ring=0
    connected=1") are parsed as they come, so the test waits on what the device says."""

    def __init__(self, binary: Path, port: int, frames: int = FRAMES,
                 tls: tuple[Path, Path, Path] | None = None) -> None:
        self.proc = subprocess.Popen(
            [str(binary), "-v", "-T", "30000", LOOPBACK, str(port), DEVICE, str(INTERVAL_MS),
             str(frames), PREFIX, *(str(p) for p in tls or ())],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            # leak checking needs ptrace, which some CI containers refuse; memory errors and
            # undefined behaviour are still fatal
            env={**os.environ, "ASAN_OPTIONS": "detect_leaks=0"})
        self.state: dict[str, int] = {}
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._lock:
                self.lines.append(line.rstrip())
                self.state.update({k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)})

    def get(self, key: str) -> int:
        with self._lock:
            return self.state.get(key, 0)

    def finish(self, timeout: float) -> tuple[int, dict[str, Any]]:
        """(exit status, the JSON counters line or {})."""
        out, _ = self.proc.communicate(timeout=timeout)
        self._reader.join(5)
        lines = out.strip().splitlines()  # none if it crashed (an ASan report is on stderr)
        return self.proc.returncode, json.loads(lines[-1]) if lines else {}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Recorder:
    """A QoS 1 subscriber with a persistent session (the broker keeps it across its restart):
    which seqs arrived, and with which h flag."""

    def __init__(self, port: int, tls: tuple[Path, Path, Path] | None = None) -> None:
        self.flags: dict[int, set[bool]] = defaultdict(set)
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="c-sdk-recorder",
                                  clean_session=False, protocol=MQTTProtocolVersion.MQTTv311)
        if tls is not None:
            ca, cert, key = tls
            self.client.tls_set(ca_certs=str(ca), certfile=str(cert), keyfile=str(key))
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.client.on_connect = lambda c, *_: c.subscribe(f"{PREFIX}/{DEVICE}/telemetry", 1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(LOOPBACK, port)
        self.client.loop_start()
        wait_for(self._subscribed.is_set, 10, what="recorder subscribed")

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        raw = decode_telemetry(bytes(msg.payload), now_ms=int(time.time() * 1000))
        with self._lock:
            self.flags[raw.seq].add(raw.historical)

    def seqs(self, historical: bool) -> set[int]:
        with self._lock:
            return {s for s, flags in self.flags.items() if historical in flags}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def device_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_example(tmp_path_factory.mktemp("c-build"))


@pytest.fixture
def recorder(mosquitto: Mosquitto) -> Iterator[Recorder]:
    rec = Recorder(mosquitto.port)
    yield rec
    rec.close()


def values_of(vm: VictoriaMetrics, metric: str) -> list[float]:
    return sorted(v for _, v in vm_samples(vm, metric).get(DEVICE, []))


def test_c_device_rides_out_a_broker_restart_exactly_once(
        device_binary: Path, mosquitto: Mosquitto, victoria_metrics: VictoriaMetrics,
        gateway_factory: GatewayFactory, recorder: Recorder) -> None:
    """60 frames, 50 ms apart; the broker is stopped after 15 are acknowledged and started
    again once 15 more wait in the device's ring."""
    gw = gateway_factory(mosquitto, victoria_metrics)
    device = DeviceRun(device_binary, mosquitto.port)
    try:
        wait_for(lambda: device.get("acked") >= 15, 15, what="15 frames acknowledged live")
        mosquitto.stop()  # SIGTERM: the broker saves its sessions, as in a planned restart
        wait_for(lambda: device.get("ring") >= OUTAGE_FRAMES, 10,
                 what=f"{OUTAGE_FRAMES} frames ringed while the broker is away")
        mosquitto.start()  # same port, same persistence dir
        status, counters = device.finish(timeout=30)
    finally:
        device.stop()
    log = "\n".join(device.lines[-60:])
    assert status == 0, f"device exited {status}: {counters}\n{log}"
    assert counters["acked"] == counters["built"] == FRAMES
    assert counters["ringed"] >= OUTAGE_FRAMES and counters["dropped"] == 0
    assert counters["replayed"] == counters["ringed"]  # the whole ring went out again
    assert counters["disconnects"] == 1 and counters["connects"] == 2

    # On the wire: the ringed frames were replayed with h=true, the others went live.
    wait_for(lambda: recorder.seqs(True) | recorder.seqs(False) == set(range(FRAMES)), 15,
             what=f"all {FRAMES} seqs at the subscriber")
    assert len(recorder.seqs(True)) == counters["replayed"]
    assert recorder.seqs(True).isdisjoint(recorder.seqs(False))

    # The gateway stored each frame once (resends after the restart are dropped by dedup) ...
    def received() -> int:
        response = gw.http.get(f"/api/v1/devices/{DEVICE}")
        return int(response.json()["completeness"]["received"]) if response.is_success else -1
    wait_for(lambda: received() == FRAMES and gw.caught_up(), 20,
             what=f"{FRAMES} frames stored and forwarded")
    # ... and VictoriaMetrics holds every frame's samples exactly once: the gauge carries the
    # frame's seq, the counter the number of frames built so far.
    frames = [float(s) for s in range(FRAMES)]
    wait_for(lambda: set(values_of(victoria_metrics, "c_sdk_demo_frame")) >= set(frames), 10,
             what="a c_sdk_demo_frame sample of every frame")
    assert values_of(victoria_metrics, "c_sdk_demo_frame") == frames  # none doubled
    assert values_of(victoria_metrics, "c_sdk_demo_frames_total") == [f + 1 for f in frames]
    assert len(values_of(victoria_metrics, "c_sdk_demo_tick_late_ms_count")) == FRAMES


@pytest.fixture
def pki(tmp_path: Path) -> certs.CaPaths:
    paths = certs.init_ca(tmp_path / "pki", ["localhost"], [LOOPBACK])
    for name in (DEVICE, "fleetgate"):
        certs.issue_client(paths.dir, name)
    return paths


@pytest.fixture
def secure_broker(tmp_path: Path, pki: certs.CaPaths) -> Iterator[SecureMosquitto]:
    yield from running(SecureMosquitto(tmp_path / "broker", pki.dir))


def test_c_device_over_mutual_tls(device_binary: Path, pki: certs.CaPaths,
                                  secure_broker: SecureMosquitto) -> None:
    """CA, client certificate and key as the last three arguments, against the shipped
    secure broker configuration (certificate CN = username, the shipped ACL): the frames
    reach the gateway's user, whom the ACL lets read only what a device published as itself."""
    recorder = Recorder(secure_broker.port, (pki.ca_cert, *pki.client("fleetgate")))
    device = DeviceRun(device_binary, secure_broker.port, frames=5,
                       tls=(pki.ca_cert, *pki.client(DEVICE)))
    try:
        status, counters = device.finish(timeout=30)
        assert status == 0, f"device exited {status}: {counters}\n" + "\n".join(device.lines)
        assert (counters["acked"], counters["connects"]) == (5, 1)
        wait_for(lambda: recorder.seqs(False) | recorder.seqs(True) == set(range(5)), 10,
                 what="5 frames over TLS at the gateway's user")
    finally:
        device.stop()
        recorder.close()


def test_rtos_sketch_compiles_against_the_header() -> None:
    """sdk/c/examples/rtos_sketch.c is not linked (it declares an RTOS client's API itself),
    but it must keep compiling, warnings as errors, as the SDK's header changes."""
    system_tool("cc", "gcc")
    done = subprocess.run([system_tool("make", "make"), "-C", str(EXAMPLES), "rtos-sketch"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
