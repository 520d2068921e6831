"""Sharding by topic prefix: two gateways on one broker, each owning its slice, into one receiver.

Gateway A (`topic_prefix = siteA`) and gateway B (`siteB`) share one Mosquitto and one
VictoriaMetrics, each with its own gateway_id (so its own MQTT session) and data dir. Site A's
devices are encoded by the gateway's own codec (births sent by `mosquitto_pub`, libmosquitto),
site B's by the device SDK's core (fleetgate_device.DeviceCore). Every sample of both slices
reaches VictoriaMetrics exactly once; each gateway lists, counts and names only its own slice.
A device publishing under a prefix no gateway owns (`siteC`) is seen by none: nothing
subscribes to its topics, so the broker drops its messages (docs/scaling.md).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import tests.support.factories as f
import tests.support.publisher as publisher
from devstack import GatewayProcess, Mosquitto, Prometheus, VictoriaMetrics, wait_for
from fleetgate_device import DeviceCore, Sample
from tests.support.publisher import Publisher
from tests.support.receivers import account, vm_samples
from tests.support.tools import system_tool

pytestmark = pytest.mark.e2e

SITE_A = range(0, 4)  # encoded by device_protocol, births through mosquitto_pub
SITE_B = range(10, 13)  # encoded by the device SDK's core
UNOWNED = 99  # publishes under siteC, which no gateway subscribes to
FRAMES = range(20)
METRIC = "device_temperature_celsius"


def start_gateways(tmp_path: Path, mosquitto: Mosquitto,
                   receivers: Sequence[Prometheus | VictoriaMetrics],
                   **per_gateway: dict[str, str]) -> Iterator[dict[str, GatewayProcess]]:
    """Gateways named by their gateway_id, each in its own directory (its own database),
    started side by side; stopped (by PID) when the generator closes."""
    gateways = {
        gateway_id: GatewayProcess(tmp_path / gateway_id, mqtt_url=mosquitto.url,
                                   remote_write_urls=[r.remote_write_url for r in receivers],
                                   settings={"gateway_id": gateway_id, **settings})
        for gateway_id, settings in per_gateway.items()}
    try:
        with ThreadPoolExecutor(len(gateways)) as pool:  # two Python start-ups at once
            list(pool.map(lambda gw: gw.start(), gateways.values()))
        yield gateways
    finally:
        for gw in gateways.values():
            gw.stop()


@pytest.fixture
def shards(tmp_path: Path, mosquitto: Mosquitto,
           victoria_metrics: VictoriaMetrics) -> Iterator[dict[str, GatewayProcess]]:
    yield from start_gateways(tmp_path, mosquitto, [victoria_metrics],
                              **{"gw-a": {"topic_prefix": "siteA"},
                                 "gw-b": {"topic_prefix": "siteB"}})


def mosquitto_pub(mosquitto: Mosquitto, messages: list[tuple[str, bytes]],
                  workdir: Path) -> None:
    """Each message by its own mosquitto_pub process, which waits for its PUBACK (QoS 1)."""
    tool = system_tool("mosquitto_pub", "mosquitto-clients")
    workdir.mkdir(exist_ok=True)
    for n, (topic, payload) in enumerate(messages):
        path = workdir / f"payload-{n}"
        path.write_bytes(payload)
        subprocess.run([tool, "-h", mosquitto.host, "-p", str(mosquitto.port), "-q", "1",
                        "-i", f"pub-{n}", "-t", topic, "-f", str(path)],
                       check=True, capture_output=True, timeout=10)


def sdk_frames(devices: range, prefix: str, base_ms: int) -> list[tuple[str, bytes]]:
    """Births and frames as the device SDK's core builds them, one frame per seq per device;
    each value names its (device, seq) like the factories' frames do."""
    out: list[tuple[str, bytes]] = []
    cores = {}
    for i in devices:
        core = cores[i] = DeviceCore(f.device_id(i), hw="rp2040", fw="0.9.0", interval_ms=60_000,
                                     topic_prefix=prefix, boot=f.boot_id(i))
        core.declare(METRIC)  # declared before the birth: no re-birth before the first frame
        out += [(p.topic, p.payload) for p in core.on_connect(base_ms - 1000)]
    for seq in FRAMES:
        for i in devices:
            sample = Sample(METRIC, f.sample_value(i, seq))
            out += [(p.topic, p.payload)
                    for p in cores[i].telemetry(base_ms + seq * 1000, [sample])]
    return out


def kinds(messages: list[tuple[str, bytes]]) -> dict[str, int]:
    counted: dict[str, int] = {}
    for topic, _ in messages:
        kind = topic.rsplit("/", 1)[1]
        counted[kind] = counted.get(kind, 0) + 1
    return counted


def test_two_gateways_each_own_their_prefix_and_every_sample_arrives_once(
        shards: dict[str, GatewayProcess], mosquitto: Mosquitto,
        victoria_metrics: VictoriaMetrics, tmp_path: Path) -> None:
    gw_a, gw_b = shards["gw-a"], shards["gw-b"]
    base = f.now_ms() - 60_000
    # The unowned prefix first: once the owned frames behind it have arrived, so would it have.
    unowned = [(f"siteC/{f.device_id(UNOWNED)}/birth", f.birth_payload(UNOWNED)),
               *publisher.telemetry(range(UNOWNED, UNOWNED + 1), FRAMES[:3], base, "siteC")]
    mosquitto_pub(mosquitto, unowned, tmp_path / "pub")
    site_a = publisher.births(SITE_A, prefix="siteA")
    mosquitto_pub(mosquitto, site_a, tmp_path / "pub")
    site_a += publisher.telemetry(SITE_A, FRAMES, base, prefix="siteA")
    site_b = sdk_frames(SITE_B, "siteB", base)
    with Publisher(mosquitto.url) as pub:
        pub.publish(site_a[len(SITE_A):])
        pub.publish(site_b)

    def delivered(gw: GatewayProcess, frames: int) -> bool:
        return gw.metric("fleetgate_frames_stored_total") == frames and gw.caught_up()

    wait_for(lambda: delivered(gw_a, len(site_a)) and delivered(gw_b, len(site_b)), 30,
             what="both gateways store and send their slice")

    # VictoriaMetrics holds every sample of both slices once, and nothing of siteC.
    expected = {f.device_id(i): {f.sample_value(i, s) for s in FRAMES}
                for i in (*SITE_A, *SITE_B)}
    wait_for(lambda: account(vm_samples(victoria_metrics, METRIC), expected) == (0, 0), 20,
             what="every sample in VictoriaMetrics")
    received = vm_samples(victoria_metrics, METRIC)
    assert set(received) == set(expected)  # not dev-0099
    assert sum(map(len, received.values())) == len(expected) * len(FRAMES)

    for gw, devices, sent, prefix in ((gw_a, SITE_A, site_a, "siteA"),
                                      (gw_b, SITE_B, site_b, "siteB")):
        listing = gw.http.get("/api/v1/devices").json()
        assert sorted(d["device_id"] for d in listing["devices"]) == [
            f.device_id(i) for i in devices]
        summary = gw.http.get("/api/v1/fleet/summary").json()
        gateway_id = gw.settings["gateway_id"]
        assert summary["slice"] == {
            "gateway_id": gateway_id, "topic_prefix": prefix,
            "subscriptions": [f"{prefix}/+/birth", f"{prefix}/+/telemetry",
                              f"{prefix}/+/death"],
            "broker": mosquitto.url, "mqtt_client_id": f"fleetgate-{gateway_id}"}
        assert summary["total"] == len(devices)
        counts = kinds(sent)
        assert gw.metric("fleetgate_frames_received_total", kind="birth") == counts["birth"]
        assert gw.metric("fleetgate_frames_received_total",
                         kind="telemetry") == counts["telemetry"]
        assert gw.metric("fleetgate_frames_invalid_total") == 0
        assert gw.metric("fleetgate_frames_held") == 0  # no frame of another slice waits
