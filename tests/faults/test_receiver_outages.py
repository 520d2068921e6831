"""Receivers away or failing while the fleet keeps publishing: the backlog waits in SQLite and
arrives once, in order, when they answer again."""

from __future__ import annotations

import email.utils
import itertools
import time

import msgpack
import pytest

import tests.support.factories as f
import tests.support.publisher as publisher
from devstack import Mosquitto, Prometheus, VictoriaMetrics, wait_for
from tests.faults.conftest import FaultReport
from tests.faults.probes import FAST_RETRY, METRIC, GatewayFactory, buffer_frames, out_of_order
from tests.support.faultproxy import Fault, FaultyReceiver
from tests.support.publisher import PacedFleet, Publisher
from tests.support.receivers import account, expected_temperatures, prom_counts, vm_samples

pytestmark = pytest.mark.e2e

LONG_OUTAGE_S = 600.0  # issue 3: "the remote-write receiver down for 10 minutes (long run)"


def test_receivers_down_while_the_fleet_publishes(
        mosquitto: Mosquitto, prometheus: Prometheus, victoria_metrics: VictoriaMetrics,
        gateway_factory: GatewayFactory, fault_report: FaultReport, long_run: bool) -> None:
    """Both remote-write receivers down while devices publish (10 min in the long run)."""
    gw = gateway_factory(mosquitto, prometheus, victoria_metrics, **FAST_RETRY)
    devices = range(20)
    if long_run:  # real time: one frame per device per second for 12 minutes
        seqs, round_s, base = range(720), 1.0, f.now_ms()
    else:
        seqs, round_s, base = range(200), 0.05, f.now_ms() - 300_000
    # The first frames go out before the outage; the paced fleet publishes the rest during it
    # (started after the receivers stop, so a slow machine cannot finish it beforehand).
    with Publisher(mosquitto.url, client_id="first-frames") as pub:
        first = pub.publish(publisher.births(devices))
        first += pub.publish(publisher.telemetry(devices, seqs[:30], base))
    wait_for(lambda: gw.metric("fleetgate_frames_stored_total") == first and gw.caught_up(),
             60, what="the first frames forwarded")
    prometheus.stop()
    victoria_metrics.stop()
    outage_started = time.monotonic()
    fleet = PacedFleet(mosquitto.url, devices, seqs[30:], base, round_interval_s=round_s)
    fleet.start()
    try:
        wait_for(lambda: gw.metric("fleetgate_forward_retries_total") > 0
                 and (long_run or not fleet.is_alive())
                 and gw.metric("fleetgate_frames_stored_total") == first + fleet.sent,
                 120, what="a backlog held during the outage")
        assert buffer_frames(gw) > 0
        # operators alert on this gauge: it must grow during the outage (updated every 5 s)
        wait_for(lambda: gw.metric("fleetgate_oldest_unsent_age_seconds") > 0, 15,
                 what="the oldest unsent age to show the backlog")
        if long_run:  # the outage's length is the point here, not a condition to await
            time.sleep(max(0.0, LONG_OUTAGE_S - (time.monotonic() - outage_started)))
        held = buffer_frames(gw)
        outage_s = time.monotonic() - outage_started
        prometheus.start()  # same port, same data dir
        victoria_metrics.start()
    finally:
        fleet.join(LONG_OUTAGE_S + 300)
    assert fleet.error is None, f"publisher failed: {fleet.error!r}"
    frames_in = first + fleet.sent
    wait_for(lambda: gw.metric("fleetgate_frames_stored_total") == frames_in and gw.caught_up(),
             120, what="the backlog forwarded after the receivers returned")

    expected = expected_temperatures(devices, seqs)
    wait_for(lambda: account(vm_samples(victoria_metrics, METRIC), expected)[0] == 0, 30,
             what="VictoriaMetrics to show every sample")
    lost, doubled = account(vm_samples(victoria_metrics, METRIC), expected)
    samples_in = sum(len(v) for v in expected.values())
    note = f"outage {outage_s:.0f} s, {held:,} frames held at the end of it"
    fault_report.record(frames_in=frames_in, samples_in=samples_in,
                        samples_out=samples_in - lost, lost=lost, doubled=doubled, note=note)
    # The long run's frames carry device times up to base + 719 s, a little ahead of the wall
    # clock when the fleet finishes early: an instant query counts only samples up to now.
    newest_ms = base + seqs[-1] * 1000
    wait_for(lambda: f.now_ms() > newest_ms, 60, what="the newest sample's time to pass")
    prom = prom_counts(prometheus, METRIC)
    prom_lost = sum(len(seqs) - prom.get(f.device_id(i), 0) for i in devices)
    fault_report.record(frames_in=frames_in, samples_in=samples_in,
                        samples_out=samples_in - prom_lost, lost=prom_lost, doubled=0,
                        receiver="Prometheus",
                        note=note + "; every device's samples checked in order")
    assert (lost, doubled) == (0, 0)
    assert prom == {f.device_id(i): len(seqs) for i in devices}
    assert out_of_order(prometheus, devices, seqs, base) == []
    assert gw.metric("fleetgate_forward_dead_letters_total") == 0
    assert buffer_frames(gw) == 0


def test_receiver_answering_500_and_429_with_retry_after(
        mosquitto: Mosquitto, victoria_metrics: VictoriaMetrics,
        gateway_factory: GatewayFactory, fault_report: FaultReport) -> None:
    """Receiver answering 500, 503 and 429 with Retry-After while devices publish."""
    with FaultyReceiver(victoria_metrics.remote_write_url) as receiver:
        gw = gateway_factory(mosquitto, receiver, **FAST_RETRY)  # backoff ceiling 1 s
        devices, first, second = range(20), range(50), range(50, 150)
        base = f.now_ms() - 300_000
        with Publisher(mosquitto.url) as pub:
            pub.publish(publisher.births(devices))
            pub.publish(publisher.telemetry(devices, first, base))
            wait_for(lambda: gw.metric("fleetgate_frames_stored_total") == 20 * 51
                     and gw.caught_up(), 60, what="the first frames forwarded")
            # First, as the date counts from now: the next request comes within a flush.
            http_date = email.utils.formatdate(time.time() + 3, usegmt=True)
            receiver.plan(Fault(429, "too many requests", retry_after=http_date),
                          Fault(500, "internal error"), Fault(500, "internal error"),
                          Fault(503, "overloaded", retry_after="2"),
                          Fault(429, "too many requests", retry_after="3"),
                          Fault(500, ""))
            failing_from = len(receiver.seen)
            pub.publish(publisher.telemetry(devices, second, base))
        frames_in = 20 * 151
        wait_for(lambda: gw.metric("fleetgate_frames_stored_total") == frames_in
                 and gw.caught_up(), 90, what="everything forwarded once the receiver recovers")
        assert receiver.pending() == 0
        seen = receiver.seen[failing_from:]

    answers = [s.status for s in seen]
    assert answers[:6] == [429, 500, 500, 503, 429, 500]
    # The backoff ceiling is 1 s; a Retry-After is honoured above it. (An HTTP date has
    # second resolution and counted from before the request: allow it 1.5 s.)
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(seen)]
    assert gaps[0] >= 1.5, gaps
    assert gaps[3] >= 2.0 - 0.05, gaps
    assert gaps[4] >= 3.0 - 0.05, gaps
    assert gw.metric("fleetgate_forward_retries_total") == 6
    assert gw.metric("fleetgate_forward_dead_letters_total") == 0

    seqs = range(150)
    expected = expected_temperatures(devices, seqs)
    wait_for(lambda: account(vm_samples(victoria_metrics, METRIC), expected)[0] == 0, 30,
             what="VictoriaMetrics to show every sample")
    lost, doubled = account(vm_samples(victoria_metrics, METRIC), expected)
    samples_in = sum(len(v) for v in expected.values())
    fault_report.record(frames_in=frames_in, samples_in=samples_in,
                        samples_out=samples_in - lost, lost=lost, doubled=doubled,
                        note="6 failed answers, each Retry-After honoured above the 1 s "
                             "backoff ceiling")
    assert (lost, doubled) == (0, 0)


def test_sigterm_while_the_receiver_is_down_exits_cleanly_and_keeps_the_backlog(
        mosquitto: Mosquitto, prometheus: Prometheus,
        gateway_factory: GatewayFactory, fault_report: FaultReport) -> None:
    """SIGTERM while the receiver is down; the backlog goes out after the restart."""
    gw = gateway_factory(mosquitto, prometheus, shutdown_forward_deadline_s="2", **FAST_RETRY)
    devices, seqs = range(10), range(50)
    base = f.now_ms() - 120_000
    prometheus.stop()
    state: list[bytes] = []
    with Publisher(mosquitto.url, client_id="state-watcher") as watcher:
        watcher.client.on_message = lambda c, u, m: state.append(m.payload)
        watcher.client.subscribe("fleet/_gateway/gw1/state", qos=1)
        with Publisher(mosquitto.url) as pub:
            pub.publish(publisher.births(devices))
            pub.publish(publisher.telemetry(devices, seqs, base))
        wait_for(lambda: gw.metric("fleetgate_frames_stored_total") == 10 * 51, 30)
        started = time.monotonic()
        gw.stop()  # SIGTERM: the last forward fails for 2 s, then the gateway exits
        assert gw._proc is not None and gw._proc.returncode == 0, gw.log_tail()
        assert time.monotonic() - started < 10
        wait_for(lambda: bool(state) and msgpack.unpackb(state[-1])["online"] is False, 10,
                 what="the retained state topic to say offline")
    prometheus.start()
    gw.start()  # the backlog is still in SQLite and goes out now
    expected = {f.device_id(i): 50 for i in devices}
    wait_for(lambda: prom_counts(prometheus, METRIC) == expected,
             60, what="the backlog kept through the shutdown to reach Prometheus")
    assert out_of_order(prometheus, devices, seqs, base) == []
    fault_report.record(frames_in=10 * 51, samples_in=500, samples_out=500, lost=0, doubled=0,
                        receiver="Prometheus", note="exit 0 within the 2 s forward deadline")
