"""The demo (`make demo`, i.e. `python -m devstack demo` from the checkout) starts the whole
stack; data reaches Prometheus, and every address it prints answers."""

from __future__ import annotations

import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from devstack import LOOPBACK, wait_for
from tests.support.publisher import Publisher

pytestmark = pytest.mark.e2e

URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+")
READY_LINE = "Press Ctrl-C to stop everything."
START_S = 90.0


def _demo(workdir: Path, duration: float, *extra: str) -> list[str]:
    return [sys.executable, "-m", "devstack", "demo", "--workdir", str(workdir),
            "--devices", "3", "--interval", "1", "--duration", f"{duration:g}", *extra]


def test_demo_runs_the_stack_and_fills_prometheus(tmp_path: Path) -> None:
    result = subprocess.run(_demo(tmp_path / "demo", 8), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Prometheus graph      http://127.0.0.1:" in result.stdout
    assert "/docs" in result.stdout
    assert "demo check: 3 devices" in result.stdout
    assert "fleetgate demo stopped." in result.stdout


def test_python_m_devstack_names_its_one_command(capsys: pytest.CaptureFixture[str]) -> None:
    from devstack.__main__ import main

    assert main([]) == 2
    assert "usage: python -m devstack demo" in capsys.readouterr().err
    assert main(["--help"]) == 0
    assert "make demo" in capsys.readouterr().out


class RunningDemo:
    """The demo as a child process, its stdout read by a thread (a line at a time)."""

    def __init__(self, workdir: Path, duration: float = 300, *extra: str) -> None:
        # By default --duration only bounds a demo this test failed to stop.
        self.process = subprocess.Popen(_demo(workdir, duration, *extra),
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def until(self, wanted: str, timeout: float) -> str:
        """The output up to and including the first line containing `wanted`."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"demo: no {wanted!r} within {timeout:.0f} s; output:\n"
                                     + "".join(self.output)) from None
            if line is None:
                raise AssertionError(f"demo exited ({self.process.wait()}) before {wanted!r}:"
                                     "\n" + "".join(self.output))
            self.output.append(line)
            if wanted in line:
                return "".join(self.output)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(90)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[RunningDemo]:
    running = RunningDemo(tmp_path / "demo")
    try:
        yield running
    finally:
        running.stop()


def _open_in_browser_terms(client: httpx.Client, url: str) -> str:
    """What a browser would get for `url`, redirects followed; '' if that is a non-empty 200."""
    try:
        response = client.get(url)
    except httpx.HTTPError as exc:
        return f"{url}: {exc!r}"
    if response.status_code != 200 or not response.content:
        hops = " -> ".join(str(r.url) for r in [*response.history, response])
        return f"{url}: {response.status_code} with {len(response.content)} bytes ({hops})"
    return ""


def test_every_address_the_demo_prints_answers(demo: RunningDemo) -> None:
    """Parsed from the demo's own output, so an address added to it is checked too. Web pages
    must answer 200 with a body after redirects, as in a browser. The Swagger page (/docs)
    loads its scripts from a CDN, which a machine without internet (like this one) cannot
    reach: for it, 200 of the HTML is the bar. The MQTT broker must accept a connection."""
    printed = demo.until(READY_LINE, START_S)
    urls = URL.findall(printed)
    web = [u for u in urls if u.startswith(("http://", "https://"))]
    mqtt = [u for u in urls if u.startswith("mqtt://")]
    assert len(web) >= 7 and mqtt, f"expected the demo's addresses in:\n{printed}"
    assert set(urls) == {*web, *mqtt}, f"an address this test cannot open: {urls}"

    with httpx.Client(follow_redirects=True, timeout=10.0) as client:
        failures = [f for f in (_open_in_browser_terms(client, u) for u in web) if f]
    assert failures == [], "\n".join(failures)
    for url in mqtt:
        Publisher(url, client_id="demo-address-test").close()  # waits for the CONNACK

    assert demo.stop() == 0, "".join(demo.output)
    demo.until("fleetgate demo stopped.", 5)


def _plain_mqtt_answer(port: int) -> bytes:
    """What a broker port says to a plain-TCP MQTT CONNECT, read until it hangs up (a close or
    a reset)."""
    body = bytes([0, 4, *b"MQTT", 5, 2, 0, 30, 0, 0, 4, *b"nope"])  # v5, clean start
    connect = bytes([0x10, len(body)]) + body
    received = b""
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        sock.sendall(connect)
        try:
            # A timeout (the broker kept the connection open) fails the test.
            while chunk := sock.recv(4096):
                received += chunk
        except ConnectionResetError:
            pass
    return received


def _first_telemetry_over_tls(broker_url: str, ca: Path, cert: Path, key: Path) -> str:
    """Subscribe with the gateway's identity (the only one the ACL lets read every device) and
    return the topic of the first telemetry frame."""
    parts = urlsplit(broker_url)
    topics: queue.Queue[str] = queue.Queue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="demo-address-test",
                         protocol=MQTTProtocolVersion.MQTTv5)
    client.tls_set(ca_certs=str(ca), certfile=str(cert), keyfile=str(key))
    client.on_connect = lambda c, *_: c.subscribe("fleet/+/telemetry", qos=1)
    client.on_message = lambda _c, _u, msg: topics.put(msg.topic)
    client.connect(str(parts.hostname), int(parts.port or 8883))
    client.loop_start()
    try:
        return topics.get(timeout=20)
    finally:
        client.disconnect()
        client.loop_stop()


def test_secure_demo_runs_devices_with_their_own_certificates(tmp_path: Path) -> None:
    """`make demo-secure`: every device and the gateway speak TLS with their own certificate;
    devices come online through the gateway, every address printed answers, the broker port
    refuses plain MQTT, and what the devices sent reaches Prometheus."""
    workdir = tmp_path / "demo"
    demo = RunningDemo(workdir, 300, "--secure")
    try:
        printed = demo.until(READY_LINE, START_S)
        urls = URL.findall(printed)
        web = [u for u in urls if u.startswith("http://")]
        brokers = [u for u in urls if u.startswith("mqtts://")]
        assert len(web) >= 7 and len(brokers) == 1, f"the demo's addresses in:\n{printed}"
        assert set(urls) == {*web, *brokers}, f"an address this test cannot open: {urls}"
        with httpx.Client(follow_redirects=True, timeout=10.0) as client:
            failures = [f for f in (_open_in_browser_terms(client, u) for u in web) if f]
            assert failures == [], "\n".join(failures)
            devices_url = next(u for u in web if u.endswith("/api/v1/devices"))

            def online() -> set[str]:
                body = client.get(devices_url).raise_for_status().json()
                return {d["device_id"] for d in body["devices"] if d["online"]}

            wait_for(lambda: online() == {"sim-0001", "sim-0002", "sim-0003"}, 30,
                     what="three devices online in the gateway's API")
        certs = workdir / "certs"
        topic = _first_telemetry_over_tls(brokers[0], certs / "ca.crt",
                                          certs / "clients" / "fleetgate.crt",
                                          certs / "clients" / "fleetgate.key")
        assert topic.startswith("fleet/sim-000")
        answer = _plain_mqtt_answer(int(urlsplit(brokers[0]).port or 8883))
        assert not answer.startswith(b"\x20"), "a CONNACK to plain MQTT on the TLS port"
        # Ctrl-C ends a --duration demo early; it still checks Prometheus before it stops.
        assert demo.stop() == 0, "".join(demo.output)
        demo.until("demo check: 3 devices", 5)
    finally:
        demo.stop()
