"""Samples a receiver refuses for good (Prometheus: too old / out of bounds, as after an outage
longer than its out-of-order window) are dead-lettered with its reason and counted, never retried,
and never hold back the newer data in the same batches."""

from __future__ import annotations

import factories as f
import publisher
import pytest
from publisher import Publisher
from receivers import prom_counts

from faults.conftest import FaultReport
from faults.probes import METRIC, GatewayFactory, buffer_frames, out_of_order
from gateway.devstack import Mosquitto, Prometheus, wait_for

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

    counts = prom_counts(prometheus, METRIC)
    assert counts == {f.device_id(i): 60 for i in live_devices}
    assert out_of_order(prometheus, live_devices, range(60), base) == []
    assert gw.metric("fleetgate_forward_dead_letters_total") == refused
    assert gw.metric("fleetgate_forward_retries_total") == 0  # refused for good: never retried
    dead = gw.http.get("/api/v1/dead-letters", params={"limit": 1000}).json()
    assert len(dead) == refused
    assert {d["endpoint"] for d in dead} == {prometheus.remote_write_url}
    assert all("too old sample" in d["reason"] or "out of bounds" in d["reason"] for d in dead)
    dead_devices = {i for i in old_devices for d in dead if f'"{f.device_id(i)}"' in d["series"]}
    assert dead_devices == set(old_devices)
    assert not any(f'"{f.device_id(i)}"' in d["series"] for d in dead for i in live_devices)
    assert buffer_frames(gw) == 0
    samples_in = 20 * 60 - 5 * 20  # temperature samples: live devices 60 each, old 40 each
    live_out = sum(counts.values())
    dead_temperatures = sum(1 for d in dead if METRIC in d["series"])
    fault_report.record(
        frames_in=frames_in, samples_in=samples_in, samples_out=live_out, lost=0, doubled=0,
        receiver="Prometheus",
        note=f"{dead_temperatures} too-old samples dead-lettered with Prometheus's reason "
             f"(+{refused - dead_temperatures} counter samples), 0 retries, live data complete")
    assert live_out + dead_temperatures == samples_in
