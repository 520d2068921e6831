"""End to end through real Mosquitto, the gateway process, real Prometheus and VictoriaMetrics."""

from __future__ import annotations

import msgpack

import tests.support.factories as f
import tests.support.publisher as publisher
from devstack import Mosquitto, Prometheus, VictoriaMetrics, wait_for
from tests.support.publisher import Publisher
from tests.support.receivers import expected_temperatures, prom_counts, prom_samples, vm_account

DEVICES = range(50)
FRAMES = range(200)


def test_fleet_arrives_exactly_once_in_prometheus_and_victoriametrics(
        mosquitto: Mosquitto, prometheus: Prometheus, victoria_metrics: VictoriaMetrics,
        gateway_factory) -> None:  # type: ignore[no-untyped-def]
    gw = gateway_factory(mosquitto, prometheus, victoria_metrics)
    base = f.now_ms() - 300_000
    with Publisher(mosquitto.url) as pub:
        pub.publish(publisher.births(DEVICES))
        sent = pub.publish(publisher.telemetry(DEVICES, FRAMES, base))
    assert sent == len(DEVICES) * len(FRAMES)
    wait_for(lambda: gw.metric("fleetgate_frames_stored_total") == 50 * 201 and gw.caught_up(),
             60, what="gateway to store and forward every frame")

    expected = expected_temperatures(DEVICES, FRAMES)
    assert vm_account(victoria_metrics, "device_temperature_celsius", expected) == (0, 0)
    counts = prom_counts(prometheus, "device_temperature_celsius")
    assert counts == {f.device_id(i): 200 for i in DEVICES}
    # values are in the right order: each sample's value names the seq its timestamp encodes
    samples = prom_samples(prometheus, "device_temperature_celsius", f.device_id(7))
    assert samples == [(base + s * 1000, f.sample_value(7, s)) for s in FRAMES]
    info = prometheus.query("fleet_device_info")
    assert {r["metric"]["device_id"] for r in info} == {f.device_id(i) for i in DEVICES}
    assert {r["metric"]["platform"] for r in info} == {"esp32-s3"}
    assert gw.metric("fleetgate_frames_duplicate_total") == 0
    assert gw.metric("fleetgate_forward_dead_letters_total") == 0


def test_histograms_become_bucket_sum_and_count_series(
        mosquitto: Mosquitto, victoria_metrics: VictoriaMetrics, gateway_factory) -> None:  # type: ignore[no-untyped-def]
    gw = gateway_factory(mosquitto, victoria_metrics)
    base = f.now_ms() - 60_000
    with Publisher(mosquitto.url) as pub:
        pub.publish(publisher.births(range(1)))
        pub.publish(publisher.telemetry(range(1), range(3), base, with_histogram=True))
    wait_for(lambda: gw.metric("fleetgate_frames_stored_total") == 4 and gw.caught_up(), 30)
    wait_for(lambda: [r["values"] for r in victoria_metrics.export(
        '{__name__="inference_seconds_count"}')] == [[3.0, 4.0, 5.0]], 20,
        what="histogram samples visible in VictoriaMetrics")
    buckets = victoria_metrics.export('{__name__="inference_seconds_bucket"}')
    assert sorted(r["metric"]["le"] for r in buckets) == ["+Inf", "0.01", "0.1", "1.0"]
    count = victoria_metrics.export('{__name__="inference_seconds_count"}')
    assert count[0]["values"] == [3.0, 4.0, 5.0]
    assert victoria_metrics.export('{__name__="inference_seconds_sum"}')[0]["values"] == [0.5] * 3


def test_redeliveries_and_device_replays_arrive_once(
        mosquitto: Mosquitto, victoria_metrics: VictoriaMetrics, gateway_factory) -> None:  # type: ignore[no-untyped-def]
    gw = gateway_factory(mosquitto, victoria_metrics)
    devices, frames = range(10), range(100)
    base = f.now_ms() - 300_000
    with Publisher(mosquitto.url) as pub:
        pub.publish(publisher.births(devices))
        pub.publish(publisher.telemetry(devices, frames, base))
        pub.publish(publisher.telemetry(devices, frames, base))  # everything again
        # a device replays its own buffer (h: true) after a reconnect
        pub.publish(publisher.telemetry(devices, range(40, 80), base, historical=True))
    wait_for(lambda: gw.metric("fleetgate_frames_duplicate_total") == 10 * (100 + 40)
             and gw.caught_up(), 60, what="all duplicates to be seen")
    assert gw.metric("fleetgate_frames_stored_total") == 10 * 101
    expected = expected_temperatures(devices, frames)
    assert vm_account(victoria_metrics, "device_temperature_celsius", expected) == (0, 0)


def test_bad_frames_are_quarantined_and_the_frames_around_them_arrive(
        mosquitto: Mosquitto, victoria_metrics: VictoriaMetrics, gateway_factory) -> None:  # type: ignore[no-untyped-def]
    gw = gateway_factory(mosquitto, victoria_metrics)
    base = f.now_ms() - 60_000
    good = publisher.telemetry(range(1), range(30), base)
    topic = "fleet/dev-0000/telemetry"
    bad = [
        (topic, b"\xc1\xc1 not msgpack"),
        (topic, msgpack.packb({"v": 1, "b": 1, "s": 0, "t": base, "m": [],
                               "pad": "x" * 80_000})),  # oversized (> 64 KiB)
        (topic, msgpack.packb({"v": 9, "b": 1, "s": 0, "t": base, "m": []})),  # wrong version
        (topic, msgpack.packb([1, 2, 3])),  # not a map
    ]
    mixed = good[:10] + bad[:2] + good[10:20] + bad[2:] + good[20:]
    with Publisher(mosquitto.url) as pub:
        pub.publish(publisher.births(range(1)))
        pub.publish(mixed)
    wait_for(lambda: gw.metric("fleetgate_frames_invalid_total") == 4 and gw.caught_up(), 30)
    assert gw.metric("fleetgate_frames_stored_total") == 31
    expected = expected_temperatures(range(1), range(30))
    assert vm_account(victoria_metrics, "device_temperature_celsius", expected) == (0, 0)
    quarantine = gw.http.get("/api/v1/quarantine").json()
    assert len(quarantine) == 4
    assert {q["device_id"] for q in quarantine} == {"dev-0000"}
    assert {r for q in quarantine for r in [q["reason"]]} >= {"unsupported version"}
    assert gw.is_running


def test_telemetry_before_its_birth_is_held_until_the_device_answers_rebirth(
        mosquitto: Mosquitto, victoria_metrics: VictoriaMetrics, gateway_factory) -> None:  # type: ignore[no-untyped-def]
    gw = gateway_factory(mosquitto, victoria_metrics)
    base = f.now_ms() - 60_000
    with Publisher(mosquitto.url, client_id="dev-0003") as device:
        commands: list[bytes] = []
        device.client.on_message = lambda c, u, m: commands.append(m.payload)
        device.client.subscribe("fleet/dev-0003/cmd", qos=1)
        device.publish(publisher.telemetry(range(3, 4), range(20), base))
        wait_for(lambda: gw.metric("fleetgate_frames_held") == 20, 30, what="frames held")
        wait_for(lambda: bool(commands), 10, what="a rebirth command")
        assert msgpack.unpackb(commands[0]) == {"rebirth": True}
        device.publish(publisher.births(range(3, 4)))
    wait_for(lambda: gw.metric("fleetgate_frames_stored_total") == 21 and gw.caught_up(), 30)
    assert gw.metric("fleetgate_frames_held") == 0
    expected = expected_temperatures(range(3, 4), range(20))
    assert vm_account(victoria_metrics, "device_temperature_celsius", expected) == (0, 0)


def test_api_reports_devices_health_and_metrics(
        mosquitto: Mosquitto, victoria_metrics: VictoriaMetrics, gateway_factory) -> None:  # type: ignore[no-untyped-def]
    gw = gateway_factory(mosquitto, victoria_metrics)
    base = f.now_ms() - 60_000
    with Publisher(mosquitto.url) as pub:
        pub.publish(publisher.births(range(3)))
        pub.publish(publisher.telemetry(range(3), range(5), base, with_histogram=True))
        pub.publish([("fleet/dev-0002/death", msgpack.packb({"v": 1, "b": f.boot_id(2)}))])
    wait_for(lambda: gw.metric("fleetgate_frames_received_total", kind="death") == 1
             and gw.caught_up(), 30)
    assert gw.http.get("/healthz").json() == {"status": "ok"}
    assert gw.http.get("/readyz").json() == {"ready": True, "problems": []}
    listing = gw.http.get("/api/v1/devices").json()
    assert (listing["total"], listing["counts"]) == (3, {"online": 2, "late": 0, "offline": 1})
    states = {d["device_id"]: d["state"] for d in listing["devices"]}
    assert states == {"dev-0000": "online", "dev-0001": "online", "dev-0002": "offline"}
    detail = gw.http.get("/api/v1/devices/dev-0001").json()
    assert (detail["platform"], detail["firmware"], detail["boot"], detail["last_seq"]) == (
        "esp32-s3", "2.1.0", f.boot_id(1), 4)
    assert detail["labels"] == {"site": "lab"}
    assert detail["latest"]["device_temperature_celsius"]["value"] == f.sample_value(1, 4)
    assert detail["latest"]["inference_seconds_count"]["value"] == 7.0
    missing = gw.http.get("/api/v1/devices/nope")
    assert missing.status_code == 404
    assert "nope" in missing.json()["detail"]
    assert gw.metric("fleetgate_mqtt_connected") == 1
    assert gw.metric("fleetgate_forward_samples_total") > 0
    pipeline = gw.pipeline()
    assert pipeline["buffer"]["frames"] == 0  # all forwarded and pruned
    assert pipeline["endpoints"][0]["dead_letters"] == 0


def test_acknowledged_frames_are_not_redelivered_after_a_restart(
        mosquitto: Mosquitto, victoria_metrics: VictoriaMetrics, gateway_factory) -> None:  # type: ignore[no-untyped-def]
    gw = gateway_factory(mosquitto, victoria_metrics)
    base = f.now_ms() - 60_000
    with Publisher(mosquitto.url) as pub:
        pub.publish(publisher.births(range(5)))
        pub.publish(publisher.telemetry(range(5), range(200), base))
        wait_for(lambda: gw.metric("fleetgate_frames_stored_total") == 5 * 201, 30)
        gw.stop()
        gw.start()
        # The broker delivers in order: anything it still held unacked would come before this.
        pub.publish(publisher.telemetry(range(1), range(200, 201), base))
        wait_for(lambda: gw.metric("fleetgate_frames_stored_total") == 1, 30, what="marker")
    assert gw.metric("fleetgate_frames_received_total") == 1
    assert gw.metric("fleetgate_frames_duplicate_total") == 0


def test_qos0_and_large_frames_cross_the_buffered_reader_intact(
        mosquitto: Mosquitto, victoria_metrics: VictoriaMetrics, gateway_factory) -> None:  # type: ignore[no-untyped-def]
    from device_protocol import RawSample, RawTelemetry, encode_telemetry

    gw = gateway_factory(mosquitto, victoria_metrics)
    base = f.now_ms() - 60_000
    big_frames = []
    for seq in range(20):  # ~54 KiB each: most span two of the reader's 64 KiB chunks
        samples = tuple(
            RawSample("big_metric", float(seq * 1000 + k), 0, (("k", f"{k:04d}-" + "v" * 28),))
            for k in range(900))
        big_frames.append(("fleet/dev-0009/telemetry", encode_telemetry(
            RawTelemetry(f.boot_id(9), seq, base + seq * 1000, samples, False))))
    assert all(40_000 < len(p) < 65_536 for _, p in big_frames)
    with Publisher(mosquitto.url) as pub:
        pub.publish(publisher.births(range(8, 10)))
        pub.publish(big_frames)
        for topic, payload in publisher.telemetry(range(8, 9), range(30), base):
            pub.client.publish(topic, payload, qos=0)  # QoS 0: no packet id, no PUBACK
        pub.publish(publisher.telemetry(range(8, 9), range(30, 31), base))  # a QoS 1 marker
    wait_for(lambda: gw.metric("fleetgate_frames_stored_total") == 2 + 20 + 31
             and gw.caught_up(), 60, what="big and QoS 0 frames stored and forwarded")
    assert gw.metric("fleetgate_frames_invalid_total") == 0
    wait_for(lambda: sum(len(r["values"]) for r in victoria_metrics.export(
        '{__name__="big_metric"}')) == 20 * 900, 20, what="every sample of the big frames")
    expected = expected_temperatures(range(8, 9), range(31))
    assert vm_account(victoria_metrics, "device_temperature_celsius", expected) == (0, 0)
