"""Device at the MQTT seam: a fake paho client records what is published and plays the
broker's callbacks (CONNACK, PUBACK, messages), so threads, locks and the ack bookkeeping run
as with paho, without a broker. Payloads are decoded with device_protocol."""

from __future__ import annotations

import itertools
import logging
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.reasoncodes import ReasonCode

from device_protocol import HistogramSample, decode_birth, decode_telemetry, resolve_telemetry
from devstack import wait_for
from fleetgate_device import Device, Sample
from fleetgate_device import device as device_module
from fleetgate_device.connection import make_client, parse_url, read_password, tls_context

OK = ReasonCode(4, "Success")  # PUBACK / CONNACK success (packet type 4 = PUBACK)


class Info:
    def __init__(self, mid: int) -> None:
        self.mid = mid

    def wait_for_publish(self, timeout: float | None = None) -> None:
        pass


class FakeClient:
    """The paho surface Device uses. `ack_inline`: PUBACK before publish() returns (paho's
    network thread can be that fast), which exercises the early-ack path."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []
        self.mids = itertools.count(1)
        self.unacked: list[int] = []
        self.ack_inline = False
        self.subscribed: list[tuple[str, int]] = []
        self.disconnected = False
        self.lock = threading.Lock()
        self.on_connect: Any = None
        self.on_disconnect: Any = None
        self.on_message: Any = None
        self.on_publish: Any = None

    def reconnect_delay_set(self, *_: Any) -> None: ...
    def connect_async(self, *_: Any, **__: Any) -> None: ...
    def loop_start(self) -> None: ...
    def loop_stop(self) -> None: ...

    def disconnect(self) -> None:
        self.disconnected = True

    def subscribe(self, topics: list[tuple[str, int]]) -> None:
        self.subscribed += topics

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> Info:
        with self.lock:
            mid = next(self.mids)
            self.published.append((topic, payload))
        if self.ack_inline:
            self.on_publish(self, None, mid, OK, None)
        else:
            with self.lock:
                self.unacked.append(mid)
        return Info(mid)

    # the broker's side
    def connack(self) -> None:
        self.on_connect(self, None, None, ReasonCode(2, "Success"), None)

    def ack_all(self) -> None:
        with self.lock:
            mids, self.unacked = self.unacked, []
        for mid in mids:
            self.on_publish(self, None, mid, OK, None)

    def kinds(self) -> list[str]:
        with self.lock:
            return [t.rsplit("/", 1)[1] for t, _ in self.published]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    client = FakeClient()
    monkeypatch.setattr(device_module, "make_client", lambda *a, **k: client)
    return client


def make(**kwargs: Any) -> Device:
    args: dict[str, Any] = {"hw": "raspberry-pi-5", "fw": "1.4.2", "interval_s": 3600.0,
                            "labels": {"site": "lab"}}
    args.update(kwargs)
    return Device("pi-07", "mqtt://127.0.0.1:1883", **args)


def test_metrics_with_labelled_children_decode_as_the_gateway_reads_them(
        fake: FakeClient) -> None:
    d = make()
    temp, infer = d.gauge("board_temp_c"), d.counter("inferences_total")
    lat = d.histogram("latency_ms", buckets=(1, 5, 10))
    temp.set(41.5)
    temp.set(39, sensor="gpu")
    infer.inc(model="lnn")
    infer.inc(2, model="lnn")
    for v in (0.5, 3, 3, 50):
        lat.observe(v)
    d.start()
    fake.connack()
    d.publish_now()
    assert fake.kinds() == ["birth", "telemetry"]
    assert fake.subscribed == [("fleet/pi-07/cmd", 1), ("fleet/_gateway/+/state", 1)]
    birth = decode_birth(fake.published[0][1])
    got = resolve_telemetry(decode_telemetry(fake.published[1][1]), birth).samples
    values = {(s.name, dict(s.labels).get("sensor") or dict(s.labels).get("model")):
              s.value for s in got if not isinstance(s, HistogramSample)}
    assert values == {("board_temp_c", None): 41.5, ("board_temp_c", "gpu"): 39.0,
                      ("inferences_total", "lnn"): 3.0}
    (hist,) = [s for s in got if isinstance(s, HistogramSample)]
    assert (hist.count, hist.sum) == (4.0, 56.5)
    assert hist.buckets == ((1.0, 1.0), (5.0, 3.0), (10.0, 3.0), (float("inf"), 4.0))
    d.stop()
    assert fake.kinds()[-1] == "death" and fake.disconnected


def test_refusals_are_value_errors_where_they_are_written(fake: FakeClient) -> None:
    d = make()
    with pytest.raises(ValueError, match="device_id"):
        d.gauge("t").set(1, device_id="pi-07")
    d.counter("c")
    with pytest.raises(ValueError, match="c"):
        d.gauge("c")
    with pytest.raises(ValueError, match="only goes up"):
        d.counter("c").inc(-1)
    with pytest.raises(ValueError, match="device_id"):
        make(labels={"device_id": "x"})
    d.collect = lambda: [Sample("c", 1.0, kind="gauge")]  # the counter's name as a gauge
    with pytest.raises(ValueError, match="c"):
        d.publish_now()


def test_offline_frames_replay_paced_by_pubacks_even_when_acks_beat_publish(
        fake: FakeClient) -> None:
    d = make(max_in_flight=2)
    d.gauge("g").set(1)
    for _ in range(5):
        d.publish_now()  # not connected: ringed
    assert fake.published == [] and d.core.waiting == 5
    d.start()
    fake.connack()
    wait_for(lambda: fake.kinds() == ["birth", "telemetry", "telemetry"], 5, what="2 replays")
    fake.ack_inline = True  # from now on each PUBACK comes before publish() returns
    fake.ack_all()
    wait_for(lambda: d.core.waiting == 0 and d.core.in_flight == 0, 5, what="ring drained")
    frames = [decode_telemetry(p) for t, p in fake.published if t.endswith("/telemetry")]
    assert [(f.seq, f.historical) for f in frames] == [(i, True) for i in range(5)]
    d.stop()


def test_a_failing_collect_skips_its_frame_and_the_thread_goes_on(
        fake: FakeClient, caplog: pytest.LogCaptureFixture) -> None:
    calls = itertools.count()

    def collect() -> list[Sample]:
        if next(calls) == 0:
            raise ValueError("collector broke")
        return [Sample("x", 1.0)]

    d = make(interval_s=0.05, collect=collect)
    fake.ack_inline = True
    with caplog.at_level(logging.ERROR, logger="fleetgate_device"):
        d.start()
        fake.connack()
        wait_for(lambda: fake.kinds().count("telemetry") >= 2, 5, what="frames after the error")
    d.stop()
    assert d.errors == 1 and "frame not built" in caplog.text
    assert [decode_telemetry(p).seq for t, p in fake.published
            if t.endswith("/telemetry")][:2] == [0, 1]


def test_rebirth_command_and_a_gateway_coming_online(fake: FakeClient) -> None:
    d = make()
    d.start()
    fake.connack()
    wait_for(lambda: fake.kinds() == ["birth"], 5, what="birth")

    class Msg:
        def __init__(self, topic: str, payload: bytes, retain: bool = False) -> None:
            self.topic, self.payload, self.retain = topic, payload, retain

    fake.on_message(fake, None, Msg("fleet/pi-07/cmd", b"\x81\xa7rebirth\xc3"))
    fake.on_message(fake, None, Msg("fleet/_gateway/gw/state", b"\x81\xa6online\xc2", True))
    fake.on_message(fake, None, Msg("fleet/_gateway/gw/state", b"\x81\xa6online\xc3"))
    wait_for(lambda: fake.kinds() == ["birth"] * 3, 5, what="two more births")
    assert {decode_birth(p).boot for _, p in fake.published} == {d.core.boot}
    d.stop()


def test_urls_credentials_and_tls(tmp_path: Path) -> None:
    assert parse_url("mqtts://broker.local").port == 8883
    assert parse_url("mqtt://[::1]:1884").host == "::1"
    with pytest.raises(ValueError) as err:
        parse_url("mqtt://pi:hunter2@broker:1883")
    assert "hunter2" not in str(err.value)
    with pytest.raises(ValueError):
        parse_url("http://broker")
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    assert read_password(secret) == "s3cret"
    client = make_client("pi-07", parse_url("mqtt://127.0.0.1"), username=None,
                         password_file=str(secret), ca_file=None, cert_file=None,
                         key_file=None, will=("fleet/pi-07/death", b"x"))
    assert (client._username, client._password) == (b"pi-07", b"s3cret")
    context = tls_context(None, None, None)
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(ValueError, match="mqtts"):
        make_client("pi-07", parse_url("mqtt://h"), username=None, password_file=None,
                    ca_file="ca.pem", cert_file=None, key_file=None, will=("t", b""))
    with pytest.raises(ValueError, match="together"):
        tls_context(None, "c.pem", None)


def test_a_file_ring_outlives_the_process_and_replays_under_its_boot(
        fake: FakeClient, tmp_path: Path) -> None:
    ring = tmp_path / "ring" / "frames"
    first = make(ring_path=ring)
    first.gauge("g").set(7)
    for _ in range(3):
        first.publish_now()  # never connected: ringed in the file
    first.stop()  # no death: it never connected
    assert fake.published == []

    second = make(ring_path=ring)
    assert second.core.boot != first.core.boot
    second.start()
    fake.connack()
    wait_for(lambda: len(fake.published) == 5, 5, what="two births and three replays")
    births = [decode_birth(p) for t, p in fake.published if t.endswith("/birth")]
    assert [b.boot for b in births] == [second.core.boot, first.core.boot]
    frames = [decode_telemetry(p) for t, p in fake.published if t.endswith("/telemetry")]
    assert [(f.boot, f.seq, f.historical) for f in frames] == [
        (first.core.boot, i, True) for i in range(3)]
    fake.ack_all()
    second.stop()
    third = make(ring_path=ring)  # acknowledged replays are gone from the file
    assert len(third.core.ring) == 0
    third.core.ring.close()
