"""Fleet status end to end: lifecycle states and events, stale markers in a real Prometheus,
the event stream, the completeness ledger, the series budget, auth and dead-letter replay."""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import msgpack
import pytest

import tests.support.factories as f
import tests.support.publisher as publisher
from device_protocol import RawSample, RawTelemetry, encode_telemetry
from devstack import Mosquitto, Prometheus, VictoriaMetrics, wait_for
from tests.support.faultproxy import Fault, FaultyReceiver
from tests.support.publisher import Publisher
from tests.support.receivers import vm_account

pytestmark = pytest.mark.e2e

# Devices declare 60 s intervals (tests/support/factories.py): late after 1.2 s, offline after
# 2.4 s.
FAST_LIFECYCLE = {"device_late_after_intervals": "0.02",
                  "device_offline_after_intervals": "0.04"}


def death(device_index: int) -> tuple[str, bytes]:
    return (f"fleet/{f.device_id(device_index)}/death",
            msgpack.packb({"v": 1, "b": f.boot_id(device_index)}))


def device(gw: Any, device_id: str) -> dict[str, Any]:
    return gw.http.get(f"/api/v1/devices/{device_id}").raise_for_status().json()


def test_a_silent_device_goes_late_then_offline_and_its_series_go_stale_in_prometheus(
        mosquitto: Mosquitto, prometheus: Prometheus, gateway_factory) -> None:  # type: ignore[no-untyped-def]
    gw = gateway_factory(mosquitto, prometheus, **FAST_LIFECYCLE)
    base = f.now_ms() - 4_000  # samples at base + seq s: the newest is about 1 s old
    with Publisher(mosquitto.url) as pub:
        pub.publish(publisher.births(range(2)))
        pub.publish(publisher.telemetry(range(2), range(3), base, with_histogram=True))
    wait_for(lambda: gw.caught_up() and len(prometheus.query(
        'device_temperature_celsius{device_id="dev-0000"}')) == 1, 30, what="live series")

    wait_for(lambda: device(gw, "dev-0000")["state"] == "offline", 30, what="offline")
    events = gw.http.get("/api/v1/devices/dev-0000/events").json()["events"]
    changes = [(e["previous"], e["state"], e["reason"]) for e in reversed(events)
               if e["kind"] == "state"]
    assert changes == [(None, "online", "birth"), ("online", "late", "timeout"),
                       ("late", "offline", "timeout")]
    # Stale markers 1 ms after each series' newest sample: an instant query no longer finds
    # the device's last value, although it is well within the 5-minute lookback.
    wait_for(lambda: gw.caught_up() and not prometheus.query(
        '{device_id="dev-0000", __name__=~"device_temperature_celsius|inference_total|'
        'inference_seconds_bucket|inference_seconds_count|inference_seconds_sum"}'),
        30, what="stale series")
    stale = gw.metric("fleetgate_stale_markers_total")
    # 2 devices x (gauge, counter, 4 buckets, _sum, _count, and fleet_device_info)
    assert stale == 2 * (2 + 4 + 2 + 1)
    # The samples themselves are all there: staleness hides, never deletes.
    assert len(prometheus.query('count_over_time(device_temperature_celsius'
                                '{device_id="dev-0000"}[10m])')) == 1

    with Publisher(mosquitto.url) as pub:  # it comes back
        pub.publish(publisher.telemetry(range(1), range(3, 4), f.now_ms() - 3_000))
    wait_for(lambda: device(gw, "dev-0000")["state"] == "online", 30, what="back online")
    newest = gw.http.get("/api/v1/devices/dev-0000/events?limit=1").json()["events"][0]
    assert (newest["previous"], newest["state"], newest["reason"]) == (
        "offline", "online", "telemetry")


def test_death_reboot_and_gaps_reach_the_api_and_the_event_stream(
        mosquitto: Mosquitto, victoria_metrics: VictoriaMetrics, gateway_factory) -> None:  # type: ignore[no-untyped-def]
    gw = gateway_factory(mosquitto, victoria_metrics)
    received: list[dict[str, Any]] = []
    connected = threading.Event()

    def listen() -> None:
        with httpx.stream("GET", f"{gw.url}/api/v1/events/stream?device_id=dev-0001",
                          timeout=30) as stream:
            event = None
            for line in stream.iter_lines():
                if line.startswith(": connected"):
                    connected.set()
                elif line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: ") and event == "device":
                    received.append(json.loads(line.removeprefix("data: ")))
                    if len(received) == 3:
                        return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert connected.wait(10)
    base = f.now_ms() - 60_000
    with Publisher(mosquitto.url) as pub:
        pub.publish(publisher.births(range(3)))
        # dev-0001 loses seqs 3-5 and 8, and sends seq 2 three times
        seqs = [0, 1, 2, 2, 2, 6, 7, 9]
        pub.publish([(t, p) for s in seqs for t, p in publisher.telemetry(range(1, 2),
                                                                          range(s, s + 1), base)])
        pub.publish([death(1)])
        pub.publish([("fleet/dev-0001/birth", f.birth_payload(1, reboot=1))])
    listener.join(30)
    kinds = [(e["kind"], e.get("state"), e.get("reason")) for e in received]
    assert kinds == [("state", "online", "birth"), ("state", "offline", "death"),
                     ("reboot", None, None)] or kinds == [
        ("state", "online", "birth"), ("state", "offline", "death"), ("state", "online", "birth")]
    assert all(e["device_id"] == "dev-0001" for e in received)

    wait_for(lambda: device(gw, "dev-0001")["boot"] == f.boot_id(1, reboot=1), 30)
    detail = device(gw, "dev-0001")
    assert detail["state"] == "online"
    old_boot = next(b for b in detail["completeness"]["boots"] if b["boot"] == f.boot_id(1))
    assert (old_boot["received"], old_boot["duplicates"], old_boot["missing"]) == (6, 2, 4)
    assert old_boot["gaps"] == [[3, 6], [8, 9]]
    assert old_boot["completeness_pct"] == pytest.approx(60.0)
    assert [e["kind"] for e in detail["events"]][:2] in (["reboot", "state"],
                                                          ["state", "reboot"])

    summary = gw.http.get("/api/v1/fleet/summary").json()
    assert summary["by_state"] == {"online": 3, "late": 0, "offline": 0}
    assert summary["by_platform"] == {"esp32-s3": 3}
    assert [w["device_id"] for w in summary["worst"]] == ["dev-0001"]
    assert summary["worst"][0]["missing"] == 4
    worst_first = gw.http.get("/api/v1/devices?sort=completeness&limit=1").json()
    assert worst_first["devices"][0]["device_id"] == "dev-0001"

    # A replay of the missing frames (h: true) fills the gaps: they leave the ledger.
    with Publisher(mosquitto.url) as pub:
        pub.publish(publisher.telemetry(range(1, 2), range(3, 6), base, historical=True))
        pub.publish(publisher.telemetry(range(1, 2), range(8, 9), base, historical=True))
    wait_for(lambda: gw.metric("fleet_device_frames_missing", device_id="dev-0001") == 0, 30)
    detail = device(gw, "dev-0001")
    old_boot = next(b for b in detail["completeness"]["boots"] if b["boot"] == f.boot_id(1))
    assert (old_boot["received"], old_boot["missing"], old_boot["gaps"]) == (10, 0, [])
    assert gw.metric("fleet_device_frames_duplicate_total", device_id="dev-0001") == 2
    assert gw.metric("fleet_device_up", device_id="dev-0001") == 1


def test_device_list_filters_sorts_and_pages(
        mosquitto: Mosquitto, victoria_metrics: VictoriaMetrics, gateway_factory) -> None:  # type: ignore[no-untyped-def]
    gw = gateway_factory(mosquitto, victoria_metrics)
    with Publisher(mosquitto.url) as pub:
        pub.publish(publisher.births(range(25)))
        pub.publish([death(i) for i in range(0, 25, 5)])
    wait_for(lambda: gw.http.get("/api/v1/devices").json()["counts"]["offline"] == 5, 30)

    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "7", **({"cursor": cursor} if cursor else {})}
        page = gw.http.get("/api/v1/devices", params=params).json()
        seen += [d["device_id"] for d in page["devices"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f.device_id(i) for i in range(25)]

    offline = gw.http.get("/api/v1/devices", params={"state": "offline", "sort": "-device_id"})
    assert [d["device_id"] for d in offline.json()["devices"]] == [
        f.device_id(i) for i in (20, 15, 10, 5, 0)]
    both = gw.http.get("/api/v1/devices", params=[("state", "late,offline"), ("q", "DEV-001")])
    assert [d["device_id"] for d in both.json()["devices"]] == ["dev-0010", "dev-0015"]
    labelled = gw.http.get("/api/v1/devices", params={"label": "site=lab", "limit": "1000"})
    assert len(labelled.json()["devices"]) == 25
    assert gw.http.get("/api/v1/devices", params={"label": "site=elsewhere"}).json()[
        "devices"] == []
    for sort, newest_first in (("-last_seen", True), ("last_seen", False)):
        pages: list[dict[str, Any]] = []
        cursor = None
        while True:
            params = {"sort": sort, "limit": "4", **({"cursor": cursor} if cursor else {})}
            page = gw.http.get("/api/v1/devices", params=params).json()
            pages += page["devices"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        last_seen = [d["last_seen_ms"] for d in pages]
        assert last_seen == sorted(last_seen, reverse=newest_first), sort
        assert sorted(d["device_id"] for d in pages) == [f.device_id(i) for i in range(25)]
    bad = gw.http.get("/api/v1/devices", params={"state": "sleeping"})
    assert bad.status_code == 422 and bad.json()["error"] == "invalid_request"
    assert gw.http.get("/api/v1/devices", params={"cursor": "%%%"}).status_code == 422


def test_a_device_over_its_series_budget_is_cut_off_and_flagged(
        mosquitto: Mosquitto, victoria_metrics: VictoriaMetrics, gateway_factory) -> None:  # type: ignore[no-untyped-def]
    gw = gateway_factory(mosquitto, victoria_metrics, device_series_budget="10")
    base = f.now_ms() - 60_000
    # dev-0000 invents a label value per frame (a cardinality attack); dev-0001 behaves.
    attack = [("fleet/dev-0000/telemetry", encode_telemetry(RawTelemetry(
        boot=f.boot_id(0), seq=seq, time_ms=base + seq,
        samples=(RawSample("request_seconds", 0.5, 0, (("request_id", f"r{seq}"),)),),
        historical=False)))
        for seq in range(30)]
    with Publisher(mosquitto.url) as pub:
        pub.publish(publisher.births(range(2)))
        pub.publish(attack)
        pub.publish(publisher.telemetry(range(1, 2), range(30), base))
    wait_for(lambda: gw.metric("fleetgate_frames_stored_total") == 62 and gw.caught_up(), 30)
    attacker = device(gw, "dev-0000")
    assert attacker["over_series_budget"] is True
    assert attacker["series_budget"] == {"limit": 10, "series": 10, "refused_samples": 20}
    assert device(gw, "dev-0001")["over_series_budget"] is False
    assert len(victoria_metrics.export('request_seconds{device_id="dev-0000"}')) == 10
    summary = gw.http.get("/api/v1/fleet/summary").json()
    assert summary["over_series_budget"] == [
        {"device_id": "dev-0000", "series": 10, "refused_samples": 20}]


def test_tokens_guard_the_api_but_not_health_and_metrics(
        mosquitto: Mosquitto, victoria_metrics: VictoriaMetrics, gateway_factory) -> None:  # type: ignore[no-untyped-def]
    gw = gateway_factory(mosquitto, victoria_metrics,
                         api_tokens="reader-secret:read,admin-secret:admin")
    with Publisher(mosquitto.url) as pub:
        pub.publish(publisher.births(range(1)))
    http = gw.http
    reader = {"Authorization": "Bearer reader-secret"}
    admin = {"Authorization": "Bearer admin-secret"}
    for path in ("/healthz", "/readyz", "/metrics"):
        assert http.get(path).status_code == 200, path
    missing = http.get("/api/v1/devices")
    assert missing.status_code == 401 and missing.json()["error"] == "unauthorized"
    assert missing.headers["www-authenticate"] == "Bearer"
    assert http.get("/api/v1/devices", headers={"Authorization": "Bearer nope"}
                    ).status_code == 401
    wait_for(lambda: http.get("/api/v1/devices", headers=reader).json()["total"] == 1, 30)
    assert http.get("/api/v1/devices/unknown", headers=reader).json()["error"] == "not_found"
    forbidden = http.delete("/api/v1/devices/dev-0000", headers=reader)
    assert forbidden.status_code == 403 and forbidden.json()["error"] == "forbidden"
    assert http.post("/api/v1/dead-letters/replay", headers=reader).status_code == 403
    with httpx.stream("GET", f"{gw.url}/api/v1/events/stream?access_token=reader-secret",
                      timeout=10) as stream:
        assert stream.status_code == 200
        assert next(stream.iter_lines()) == ": connected"
    assert http.get("/api/v1/events/stream", params={"access_token": "nope"}
                    ).status_code == 401
    assert http.delete("/api/v1/devices/dev-0000", headers=admin).status_code == 204
    assert http.get("/api/v1/devices/dev-0000", headers=reader).status_code == 404


def test_dead_letters_are_replayed_to_the_endpoint_that_refused_them(
        mosquitto: Mosquitto, victoria_metrics: VictoriaMetrics, gateway_factory) -> None:  # type: ignore[no-untyped-def]
    with FaultyReceiver(victoria_metrics.remote_write_url) as receiver:
        gw = gateway_factory(mosquitto, receiver)
        base = f.now_ms() - 60_000
        with Publisher(mosquitto.url) as pub:
            pub.publish(publisher.births(range(1)))
            wait_for(lambda: gw.metric("fleetgate_frames_stored_total") == 1
                     and gw.caught_up(), 30)
            # One frame of two samples: its request is refused once and dead-lettered whole
            # (remote-write 1.0: no resend after a 4xx, so no halves are tried).
            receiver.faults.append(Fault(400, "refused for the test"))
            pub.publish(publisher.telemetry(range(1), range(1), base))
        wait_for(lambda: gw.pipeline()["endpoints"][0]["dead_letters"] == 2, 30)
        letters = gw.http.get("/api/v1/dead-letters").json()
        assert len(letters) == 2
        assert {d["reason"] for d in letters} == {"HTTP 400: refused for the test"}
        assert len(receiver.faults) == 0

        receiver.faults.append(Fault(503, "down"))
        unavailable = gw.http.post("/api/v1/dead-letters/replay")
        assert unavailable.status_code == 503 and unavailable.json()["error"] == "unavailable"
        assert len(gw.http.get("/api/v1/dead-letters").json()) == 2  # nothing lost

        result = gw.http.post("/api/v1/dead-letters/replay", json={"limit": 100}).json()
        assert result == {"replayed": 2, "refused": 0, "remaining": 0}
    expected = {"dev-0000": {f.sample_value(0, 0)}}
    assert vm_account(victoria_metrics, "device_temperature_celsius", expected) == (0, 0)


def test_the_fleet_is_mirrored_as_metrics_through_remote_write(
        mosquitto: Mosquitto, prometheus: Prometheus, gateway_factory) -> None:  # type: ignore[no-untyped-def]
    gw = gateway_factory(mosquitto, prometheus, fleet_metrics_interval_s="0.5",
                         gateway_id="gw-test")
    base = f.now_ms() - 60_000
    with Publisher(mosquitto.url) as pub:
        pub.publish(publisher.births(range(3)))
        pub.publish(publisher.telemetry(range(3), range(4), base))
        pub.publish(publisher.telemetry(range(3), range(4), base))  # all duplicates
        pub.publish([death(2)])

    def fleet_in_prometheus() -> dict[str, float]:
        rows = prometheus.query('{__name__=~"fleet_device_up|fleet_devices|'
                                'fleet_device_frames_received_total|'
                                'fleet_device_frames_duplicate_total"}')
        return {f'{r["metric"]["__name__"]}:{r["metric"].get("device_id") or r["metric"]["state"]}':
                float(r["value"][1]) for r in rows}

    wanted = {"fleet_device_up:dev-0000": 1.0, "fleet_device_up:dev-0002": 0.0,
              "fleet_devices:online": 2.0, "fleet_devices:offline": 1.0,
              "fleet_device_frames_received_total:dev-0001": 4.0,
              "fleet_device_frames_duplicate_total:dev-0001": 4.0}
    wait_for(lambda: wanted.items() <= fleet_in_prometheus().items(), 30,
             what="the fleet's own metrics in Prometheus")
    gateways = {r["metric"]["gateway"] for r in prometheus.query("fleet_devices")}
    assert gateways == {"gw-test"}
    assert gw.metric("fleet_device_up", device_id="dev-0002") == 0


def test_stale_markers_survive_a_receiver_outage(
        mosquitto: Mosquitto, victoria_metrics: VictoriaMetrics, gateway_factory) -> None:  # type: ignore[no-untyped-def]
    gw = gateway_factory(mosquitto, victoria_metrics, remote_write_retry_max_s="0.5",
                         **FAST_LIFECYCLE)
    base = f.now_ms() - 4_000
    with Publisher(mosquitto.url) as pub:
        pub.publish(publisher.births(range(1)))
        pub.publish(publisher.telemetry(range(1), range(3), base))
    wait_for(lambda: gw.metric("fleetgate_frames_stored_total") == 4 and gw.caught_up(), 30)
    victoria_metrics.stop()  # the device goes offline while the receiver is away
    wait_for(lambda: gw.metric("fleetgate_stale_markers_total") == 2 + 1, 30,  # + the info
             what="markers queued")
    assert not gw.caught_up()  # held in the buffer like any frame
    victoria_metrics.start()
    wait_for(gw.caught_up, 60, what="the markers delivered after the outage")

    def values(metric: str) -> list[float | None]:
        rows = victoria_metrics.export(f'{metric}{{device_id="dev-0000"}}')
        return [v for row in rows for v in row["values"]]

    for metric in ("device_temperature_celsius", "inference_total"):
        # three samples, then the stale marker (exported as null) after the newest
        assert values(metric)[:3] == [f.sample_value(0, s) if metric.startswith("device")
                                      else float(s) for s in range(3)]
        assert values(metric)[3:] == [None], metric
