"""Fault injection end to end: the durability promise under the faults it is made for.

Real Mosquitto, the gateway process, real Prometheus and VictoriaMetrics; each test breaks one
thing (a receiver, the gateway, the broker, the data itself), counts what the fleet published
and what the receivers hold, and requires nothing lost and, where the receiver shows raw
duplicates, nothing doubled beyond the documented at-least-once window.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import factories as f
import httpx
import msgpack
import publisher
import pytest
from publisher import Publisher
from receivers import expected_temperatures, prom_counts, prom_samples, vm_account

from gateway.devstack import GatewayProcess, Mosquitto, Prometheus, VictoriaMetrics, wait_for

pytestmark = pytest.mark.e2e

METRIC = "device_temperature_celsius"
# Backoff ceiling while a receiver is away. The default (30 s) would only make the test wait
# longer after the receiver is back; the retry path is the same.
FAST_RETRY = {"remote_write_retry_max_s": "1"}

GatewayFactory = Callable[..., GatewayProcess]  # the gateway_factory fixture (e2e/conftest.py)



# ------------------------------------------------------------------------------ helpers


def _readyz(gw: GatewayProcess) -> int | None:
    try:
        return gw.http.get("/readyz", timeout=3.0).status_code
    except httpx.TransportError:
        return None


def _committed_upto(gw: GatewayProcess) -> int:
    """Frame ids are kept in SQLite, so this grows across restarts (metrics start at 0)."""
    try:
        return int(gw.pipeline()["committed_upto"])
    except httpx.TransportError:
        return -1


def _buffer_frames(gw: GatewayProcess) -> int:
    return int(gw.pipeline()["buffer"]["frames"])


def _in_order(prom: Prometheus, devices: range, seqs: range, base_ms: int) -> list[str]:
    """Devices whose Prometheus samples are not exactly one per seq, each value at its time."""
    return [f.device_id(i) for i in devices
            if prom_samples(prom, METRIC, f.device_id(i))
            != [(base_ms + s * 1000, f.sample_value(i, s)) for s in seqs]]


class PacedFleet(threading.Thread):
    """A fleet publishing from its own thread at a steady pace: one frame per device per round.

    (Not in tests/publisher.py: only the SIGKILL test needs a publisher that keeps going while
    the main thread breaks things.)
    """

    def __init__(self, mqtt_url: str, devices: range, seqs: range, base_ms: int,
                 round_interval_s: float) -> None:
        super().__init__(name="paced-fleet", daemon=True)
        self.mqtt_url = mqtt_url
        self.devices = devices
        self.seqs = seqs
        self.base_ms = base_ms
        self.round_interval_s = round_interval_s
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with Publisher(self.mqtt_url, client_id="paced-fleet") as pub:
                self.sent += pub.publish(publisher.births(self.devices))
                next_round = time.monotonic()
                for seq in self.seqs:
                    frames = publisher.telemetry(self.devices, range(seq, seq + 1), self.base_ms)
                    self.sent += pub.publish(frames)
                    next_round += self.round_interval_s
                    # Pacing a publisher is the one place a sleep is the point.
                    time.sleep(max(0.0, next_round - time.monotonic()))
        except BaseException as exc:
            self.error = exc


# ------------------------------------------------------------------------------ receiver outage


def test_prometheus_outage_is_buffered_and_delivered_once_in_order_when_it_returns(
        mosquitto: Mosquitto, prometheus: Prometheus,
        gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(mosquitto, prometheus, **FAST_RETRY)
    devices, first, second = range(20), range(50), range(50, 100)
    base = f.now_ms() - 300_000
    with Publisher(mosquitto.url) as pub:
        pub.publish(publisher.births(devices))
        pub.publish(publisher.telemetry(devices, first, base))
        wait_for(lambda: gw.metric("fleetgate_frames_stored_total") == 20 * 51
                 and gw.caught_up(), 60, what="first half forwarded")

        prometheus.stop()
        pub.publish(publisher.telemetry(devices, second, base))
        wait_for(lambda: gw.metric("fleetgate_frames_stored_total") == 20 * 101
                 and gw.metric("fleetgate_forward_retries_total",
                               endpoint=prometheus.remote_write_url) > 0
                 and _buffer_frames(gw) == 20 * 50,
                 60, what="second half stored and held while Prometheus is down")
    assert not gw.caught_up()
    # operators alert on this gauge: it must grow during the outage (updated every 5 s)
    wait_for(lambda: gw.metric("fleetgate_oldest_unsent_age_seconds") > 0, 15,
             what="the oldest unsent age to show the backlog")

    prometheus.start()  # same port, same data dir
    wait_for(gw.caught_up, 60, what="backlog forwarded after Prometheus returned")
    assert prom_counts(prometheus, METRIC) == {f.device_id(i): 100 for i in devices}
    assert _in_order(prometheus, devices, range(100), base) == []
    assert gw.metric("fleetgate_forward_dead_letters_total") == 0
    assert _buffer_frames(gw) == 0


def test_one_endpoint_down_holds_its_backlog_while_the_other_stays_live(
        mosquitto: Mosquitto, prometheus: Prometheus, victoria_metrics: VictoriaMetrics,
        gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(mosquitto, prometheus, victoria_metrics, **FAST_RETRY)
    devices, first, second = range(20), range(50), range(50, 100)
    base = f.now_ms() - 300_000
    vm_url = victoria_metrics.remote_write_url
    with Publisher(mosquitto.url) as pub:
        pub.publish(publisher.births(devices))
        pub.publish(publisher.telemetry(devices, first, base))
        wait_for(lambda: gw.metric("fleetgate_frames_stored_total") == 20 * 51
                 and gw.caught_up(), 60, what="first half forwarded to both")

        victoria_metrics.stop()
        pub.publish(publisher.telemetry(devices, second, base))
        # Live data keeps reaching Prometheus while VictoriaMetrics is away...
        wait_for(lambda: prom_counts(prometheus, METRIC)
                 == {f.device_id(i): 100 for i in devices},
                 60, what="Prometheus to receive the second half during the VM outage")
        # ...and the buffer keeps exactly what VictoriaMetrics has not taken.
        wait_for(lambda: gw.metric("fleetgate_forward_retries_total", endpoint=vm_url) > 0
                 and _buffer_frames(gw) == 20 * 50, 60, what="VM backlog held")
    state = gw.pipeline()
    behind = {e["endpoint"]: e["behind_frames"] for e in state["endpoints"]}
    assert behind == {prometheus.remote_write_url: 0, vm_url: 20 * 50}
    assert gw.metric("fleetgate_forward_retries_total",
                     endpoint=prometheus.remote_write_url) == 0

    victoria_metrics.start()  # same port, same data dir
    wait_for(gw.caught_up, 60, what="backlog forwarded after VictoriaMetrics returned")
    expected = expected_temperatures(devices, range(100))
    assert vm_account(victoria_metrics, METRIC, expected) == (0, 0)
    assert _in_order(prometheus, devices, range(100), base) == []
    assert gw.metric("fleetgate_forward_dead_letters_total") == 0
    assert _buffer_frames(gw) == 0


# ------------------------------------------------------------------------------ gateway crash


def test_sigkilled_gateway_loses_nothing_and_resends_at_most_one_batch_per_kill(
        mosquitto: Mosquitto, prometheus: Prometheus, victoria_metrics: VictoriaMetrics,
        gateway_factory: GatewayFactory) -> None:
    max_samples = 2000
    gw = gateway_factory(mosquitto, prometheus, victoria_metrics,
                         remote_write_max_samples=str(max_samples), **FAST_RETRY)
    devices, seqs = range(30), range(300)
    total = len(devices) * (len(seqs) + 1)
    base = f.now_ms() - 330_000
    fleet = PacedFleet(mosquitto.url, devices, seqs, base, round_interval_s=0.04)
    fleet.start()
    # Where to kill, given committed_upto right after the latest (re)start: in steady state;
    # just after a restart, while the frames queued during it are drained and forwarded in
    # full batches; in steady state again. Progress is read from committed_upto (frame ids
    # live in SQLite) because the gateway's metrics start from 0 on every restart.
    kill_targets: list[Callable[[int], int]] = [
        lambda _: int(total * 0.2),
        lambda restarted_at: restarted_at + 300,
        lambda restarted_at: max(restarted_at + 300, int(total * 0.7)),
    ]
    kill_points: list[tuple[int, int]] = []  # (committed frames, published frames) at each kill
    try:
        restarted_at = 0
        for kill_target in kill_targets:
            target = kill_target(restarted_at)
            wait_for(lambda t=target: _committed_upto(gw) >= t, 60,  # type: ignore[misc]
                     what=f"gateway to commit {target} frames")
            kill_points.append((_committed_upto(gw), fleet.sent))
            gw.kill()
            gw.start()  # same workdir: same SQLite buffer, same MQTT session
            restarted_at = _committed_upto(gw)
    finally:
        fleet.join(120)
    assert fleet.error is None, f"publisher failed: {fleet.error!r}"
    assert fleet.sent == total
    kills = len(kill_points)
    print(f"\nkills at (committed, published) frames: {kill_points} of {total}")
    assert any(published < total for _, published in kill_points), "no kill was mid-stream"

    expected = {f.device_id(i): len(seqs) for i in devices}
    wait_for(lambda: gw.caught_up() and prom_counts(prometheus, METRIC) == expected, 90,
             what="every frame forwarded after the last restart")
    assert _in_order(prometheus, devices, seqs, base) == []
    lost, doubled = vm_account(victoria_metrics, METRIC,
                            expected_temperatures(devices, seqs))
    print(f"VictoriaMetrics after {kills} SIGKILLs: lost {lost}, doubled {doubled} "
          f"(bound {kills * max_samples})")
    assert lost == 0
    assert doubled <= kills * max_samples
    assert gw.metric("fleetgate_forward_dead_letters_total") == 0


# ------------------------------------------------------------------------------ gateway away


def test_frames_published_while_the_gateway_is_down_wait_in_its_broker_session(
        mosquitto: Mosquitto, victoria_metrics: VictoriaMetrics,
        gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(mosquitto, victoria_metrics)  # creates the persistent session
    gw.stop()
    devices, seqs = range(20), range(200)
    base = f.now_ms() - 300_000
    with Publisher(mosquitto.url) as pub:
        sent = pub.publish(publisher.births(devices))
        sent += pub.publish(publisher.telemetry(devices, seqs, base))
    # More than Mosquitto's default queue of 1,000: only the shipped limits keep them all.
    assert sent == 20 * 201 > 1000

    gw.start()
    wait_for(lambda: gw.metric("fleetgate_frames_stored_total") == sent and gw.caught_up(), 60,
             what="the queued frames to be stored and forwarded")
    expected = expected_temperatures(devices, seqs)
    assert vm_account(victoria_metrics, METRIC, expected) == (0, 0)
    assert gw.metric("fleetgate_frames_duplicate_total") == 0


# ------------------------------------------------------------------------------ broker restart


def test_broker_restart_between_two_phases_the_gateway_reconnects_and_nothing_is_lost(
        mosquitto: Mosquitto, victoria_metrics: VictoriaMetrics,
        gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(mosquitto, victoria_metrics)
    devices, first, second = range(20), range(100), range(100, 200)
    base = f.now_ms() - 300_000
    with Publisher(mosquitto.url, client_id="fleet") as pub:
        pub.publish(publisher.births(devices))
        pub.publish(publisher.telemetry(devices, first, base))
        # No waiting for the gateway: part of the first phase is still queued or in flight
        # to it when the broker goes, and must come back from the broker's persistence.
        mosquitto.stop()
        wait_for(lambda: _readyz(gw) == 503, 15, what="/readyz to report the broker gone")
        problems = gw.http.get("/readyz").json()["problems"]
        assert problems == ["not connected to the MQTT broker"]
        mosquitto.start()  # same port, same persistence dir
        wait_for(lambda: _readyz(gw) == 200, 60, what="the gateway to reconnect by itself")
        wait_for(pub.client.is_connected, 30, what="the fleet to reconnect")
        pub.publish(publisher.telemetry(devices, second, base))
    wait_for(lambda: gw.metric("fleetgate_frames_stored_total") == 20 * 201 and gw.caught_up(),
             60, what="both phases stored and forwarded")
    expected = expected_temperatures(devices, range(200))
    assert vm_account(victoria_metrics, METRIC, expected) == (0, 0)
    assert gw.metric("fleetgate_mqtt_connected") == 1


# ------------------------------------------------------------------------------ refused for good


def test_samples_prometheus_refuses_are_dead_lettered_and_never_block_newer_data(
        mosquitto: Mosquitto, prometheus: Prometheus, gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(mosquitto, prometheus)
    old_devices, live_devices = range(5), range(5, 20)
    base = f.now_ms() - 120_000
    old_base = f.now_ms() - 2 * 3600_000  # far outside the 30 min out-of-order window
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
    wait_for(lambda: gw.metric("fleetgate_frames_stored_total") == 20 + 15 * 20 + 20 * 40
             and gw.caught_up(), 60, what="mixed data forwarded or dead-lettered")

    assert prom_counts(prometheus, METRIC) == {f.device_id(i): 60 for i in live_devices}
    assert _in_order(prometheus, live_devices, range(60), base) == []
    assert gw.metric("fleetgate_forward_dead_letters_total") == refused
    assert gw.metric("fleetgate_forward_retries_total") == 0  # refused for good: never retried
    dead = gw.http.get("/api/v1/dead-letters", params={"limit": 1000}).json()
    assert len(dead) == refused
    assert {d["endpoint"] for d in dead} == {prometheus.remote_write_url}
    assert all("too old sample" in d["reason"] or "out of bounds" in d["reason"] for d in dead)
    dead_devices = {i for i in old_devices for d in dead if f'"{f.device_id(i)}"' in d["series"]}
    assert dead_devices == set(old_devices)
    assert not any(f'"{f.device_id(i)}"' in d["series"] for d in dead for i in live_devices)
    assert _buffer_frames(gw) == 0


def test_sigterm_while_the_receiver_is_down_exits_cleanly_and_keeps_the_backlog(
        mosquitto: Mosquitto, prometheus: Prometheus,
        gateway_factory: GatewayFactory) -> None:
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
    wait_for(lambda: prom_counts(prometheus, METRIC) == {f.device_id(i): 50 for i in devices},
             60, what="the backlog kept through the shutdown to reach Prometheus")
