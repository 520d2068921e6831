"""Samples a receiver refuses for good (Prometheus: too old / out of bounds, as after an outage
longer than its out-of-order window) are dead-lettered with its reason and counted, never retried
and never sent again by the forwarder: remote-write 1.0 forbids resending after a 4xx, so a
refused request is dead-lettered whole, good samples included, and an operator's replay
(POST /api/v1/dead-letters/replay) delivers those. Refusals never hold back newer data."""

from __future__ import annotations

import pytest

import tests.support.factories as f
import tests.support.publisher as publisher
from devstack import Mosquitto, Prometheus, wait_for
from tests.faults.conftest import FaultReport
from tests.faults.probes import METRIC, GatewayFactory, buffer_frames, out_of_order
from tests.support.publisher import Publisher
from tests.support.receivers import prom_counts

pytestmark = pytest.mark.e2e


def test_samples_prometheus_refuses_are_dead_lettered_and_never_block_newer_data(
        mosquitto: Mosquitto, prometheus: Prometheus, gateway_factory: GatewayFactory,
        fault_report: FaultReport) -> None:
    """Prometheus refusing samples too old for it (as after a long outage), mixed with live ones."""
    gw = gateway_factory(mosquitto, prometheus)
    old_devices, live_devices = range(5), range(5, 20)
    base = f.now_ms() - 120_000
    # Two hours old: what a backlog looks like to Prometheus after an outage longer than its
    # out-of-order window (30 min here), without waiting that long.
    old_base = f.now_ms() - 2 * 3600_000
    with Publisher(mosquitto.url) as pub:
        pub.publish(publisher.births(range(20)))
        # Current data first, so Prometheus's head is at "now" whatever it scraped meanwhile.
        pub.publish(publisher.telemetry(live_devices, range(20), base))
        wait_for(lambda: gw.metric("fleetgate_frames_stored_total") == 20 + 15 * 20
                 and gw.caught_up(), 60, what="current data forwarded")
        # Old and current frames interleaved, so they share remote-write batches.
        old = publisher.telemetry(old_devices, range(40), old_base)
        live = publisher.telemetry(live_devices, range(20, 60), base)
        mixed = [frame for r in range(40)
                 for frame in old[r * 5:(r + 1) * 5] + live[r * 15:(r + 1) * 15]]
        pub.publish(mixed)
    refused = len(old_devices) * 40 * 2  # each frame: a temperature and a counter sample
    frames_in = 20 + 15 * 20 + 20 * 40
    wait_for(lambda: gw.metric("fleetgate_frames_stored_total") == frames_in
             and gw.caught_up(), 60, what="mixed data forwarded or dead-lettered")

    samples_in = 20 * 60 - 5 * 20  # temperature samples: live devices 60 each, old 40 each
    dead = gw.http.get("/api/v1/dead-letters", params={"limit": 1000}).json()  # the newest
    assert gw.metric("fleetgate_forward_retries_total") == 0  # refused for good: never retried
    dead_total = int(gw.metric("fleetgate_forward_dead_letters_total"))
    assert dead_total >= refused
    assert {d["endpoint"] for d in dead} == {prometheus.remote_write_url}
    assert all("too old sample" in d["reason"] or "out of bounds" in d["reason"] for d in dead)
    dead_temperatures = dead_total // 2  # each frame: a temperature and a counter sample
    # each sample went out once: stored by Prometheus or dead-lettered with its request, never
    # both (the forwarder no longer splits a refused request and sends its halves again)
    live_out = sum(prom_counts(prometheus, METRIC).values())
    assert live_out + dead_temperatures == samples_in
    assert buffer_frames(gw) == 0

    # The live samples that shared a refused request are in the dead letters: a replay delivers
    # them; the too-old ones are refused again and stay.
    while True:  # 1000 at most per call, the oldest first
        replay = gw.http.post("/api/v1/dead-letters/replay", json={"limit": 1000}).json()
        if replay["replayed"] == 0:
            break
    assert replay["refused"] == replay["remaining"] == refused
    counts = prom_counts(prometheus, METRIC)
    assert counts == {f.device_id(i): 60 for i in live_devices}
    assert out_of_order(prometheus, live_devices, range(60), base) == []
    left = gw.http.get("/api/v1/dead-letters", params={"limit": 1000}).json()
    dead_devices = {i for i in old_devices for d in left if f'"{f.device_id(i)}"' in d["series"]}
    assert dead_devices == set(old_devices) and len(left) == refused
    assert not any(f'"{f.device_id(i)}"' in d["series"] for d in left for i in live_devices)
    fault_report.record(
        frames_in=frames_in, samples_in=samples_in, samples_out=sum(counts.values()), lost=0,
        doubled=0, receiver="Prometheus",
        note=f"refused requests dead-lettered whole, once ({dead_temperatures} temperature "
             f"samples, {refused // 2} too old), 0 retries; a replay delivered the live ones")
