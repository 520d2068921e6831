"""An HA pair: two gateways on the same devices, one killed for good mid-run, no sample lost or
doubled at the receivers.

gw-a and gw-b subscribe to the same topic prefix, each with its own MQTT client id (so its own
persistent session: the broker queues every QoS 1 message for each) and its own data dir, and
both remote-write every sample to the same receivers:
- VictoriaMetrics with `-dedup.minScrapeInterval=1ms`: the two copies of a sample share series
  and millisecond timestamp, so it keeps one;
- Prometheus (remote-write receiver, the shipped 30 m out-of-order window): a second, identical
  sample at the same timestamp is accepted and kept once;
- a VictoriaMetrics without dedup as the control: it must hold doubles, or the pair did not
  really write everything twice and the two above showed nothing.
Devices publish paced frames; once gw-b has forwarded part of them it is SIGKILLed and never
restarted; the devices keep publishing. Every device sample is then in each receiver exactly
once, with no gap around the kill. Second, the hard case of "lost only if the other missed it
too": gw-a is stopped (an upgrade), gw-b dies while gw-a is down, and the frames sent while no
gateway was up come to gw-a, back, from the broker's queue for its own session.

What the two gateways do NOT write identically (docs/scaling.md):
- `fleet_device_info` carries each gateway's own arrival time of the birth, so a boot has one
  sample from each gateway that saw its birth (two here, one if their clocks met in the same
  millisecond). The test asserts one or two samples per device, all 1, one label set.
- The fleet mirror (`fleet_device_up`, ... every fleet_metrics_interval_s, 1 s here) has no
  `gateway` label and each gateway's own timestamps: both gateways' samples are kept,
  interleaved. Gauges agree (the test asserts every `fleet_device_up` sample is 1);
  counters such as `fleet_device_frames_received_total` count what each gateway received
  since its own start, so they may differ between the two (and if both ticks fall in the same
  millisecond, Prometheus refuses the second copy as a duplicate: the only dead letters the test
  allows). `fleet_devices` has a `gateway` label: one series per gateway.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import tests.support.factories as f
from devstack import GatewayProcess, Mosquitto, Prometheus, VictoriaMetrics, wait_for
from tests.e2e.test_sharding import start_gateways
from tests.support.publisher import PacedFleet
from tests.support.receivers import account, prom_samples, vm_samples
from tests.support.services import running

pytestmark = pytest.mark.e2e

DEVICES = range(10)
ROUNDS = range(40)  # 400 frames, a round every 0.1 s: 4 s of traffic
ROUND_S = 0.1
METRIC = "device_temperature_celsius"
KILL_AFTER_FRAMES = 120  # gw-b has forwarded this many frames to every receiver, then dies


@pytest.fixture
def receivers(tmp_path: Path, prometheus: Prometheus,
              victoria_metrics: VictoriaMetrics) -> Iterator[dict[str, Prometheus |
                                                                 VictoriaMetrics]]:
    dedup = VictoriaMetrics(tmp_path / "vm-dedup", extra_args=["-dedup.minScrapeInterval=1ms"])
    for service in running(dedup):
        yield {"vm-dedup": service, "vm-raw": victoria_metrics, "prometheus": prometheus}


@pytest.fixture
def pair(tmp_path: Path, mosquitto: Mosquitto,
         receivers: dict[str, Prometheus | VictoriaMetrics]) -> Iterator[dict[str,
                                                                             GatewayProcess]]:
    same = {"topic_prefix": "fleet", "fleet_metrics_interval_s": "1"}
    yield from start_gateways(tmp_path, mosquitto, list(receivers.values()),
                              **{"gw-a": same, "gw-b": same})


def forwarded_everywhere(gw: GatewayProcess, frames: int) -> bool:
    """Every endpoint's cursor is past `frames` frames (births and telemetry)."""
    return all(e["cursor"] >= frames for e in gw.pipeline()["endpoints"])


def vm_range(vm: VictoriaMetrics, metric: str) -> dict[str, list[tuple[int, float]]]:
    """Samples per device as a query sees them (after the receiver's dedup), unlike export."""
    rows = vm.query(f"{metric}[1h]")
    return {r["metric"]["device_id"]: [(int(float(t) * 1000), float(v)) for t, v in r["values"]]
            for r in rows}


def test_one_of_a_pair_dies_for_good_and_every_sample_arrives_once(
        pair: dict[str, GatewayProcess], mosquitto: Mosquitto,
        receivers: dict[str, Prometheus | VictoriaMetrics]) -> None:
    gw_a, gw_b = pair["gw-a"], pair["gw-b"]
    base = f.now_ms() - 120_000
    fleet = PacedFleet(mosquitto.url, DEVICES, ROUNDS, base, ROUND_S)
    fleet.start()
    wait_for(lambda: forwarded_everywhere(gw_b, KILL_AFTER_FRAMES), 20,
             what=f"gw-b forwards {KILL_AFTER_FRAMES} frames to every receiver")
    gw_b.kill()  # SIGKILL: whatever it held unsent is gone with it; never restarted
    sent_at_kill = fleet.sent
    fleet.join(30)
    assert fleet.error is None and not fleet.is_alive()
    frames = len(DEVICES) * (1 + len(ROUNDS))  # births and telemetry
    assert sent_at_kill < frames, "the fleet had finished before the kill: nothing was shown"
    assert fleet.sent == frames
    wait_for(lambda: gw_a.metric("fleetgate_frames_stored_total") == frames
             and gw_a.caught_up(), 30, what="gw-a stores and forwards every frame")

    vm_dedup, vm_raw, prom = receivers["vm-dedup"], receivers["vm-raw"], receivers["prometheus"]
    assert isinstance(vm_dedup, VictoriaMetrics) and isinstance(vm_raw, VictoriaMetrics)
    assert isinstance(prom, Prometheus)
    expected = {f.device_id(i): [(base + s * 1000, f.sample_value(i, s)) for s in ROUNDS]
                for i in DEVICES}
    # The control: without dedup, what both gateways forwarded before the kill is there twice.
    raw_lost, raw_doubled = account(vm_samples(vm_raw, METRIC),
                                    {d: {v for _, v in s} for d, s in expected.items()})
    assert raw_lost == 0
    # (the cursor also counts births and fleet-metric writes, which are not this metric)
    assert raw_doubled >= KILL_AFTER_FRAMES // 2
    wait_for(lambda: vm_range(vm_dedup, METRIC) == expected, 20,
             what="VictoriaMetrics (dedup) holds every sample once")
    sums = vm_dedup.query(f"sum_over_time({METRIC}[1h])")
    counts = vm_dedup.query(f"count_over_time({METRIC}[1h])")
    assert {r["metric"]["device_id"]: float(r["value"][1]) for r in sums} == {
        d: sum(v for _, v in s) for d, s in expected.items()}
    assert {r["metric"]["device_id"]: int(r["value"][1]) for r in counts} == {
        d: len(ROUNDS) for d in expected}
    for i in DEVICES:
        assert prom_samples(prom, METRIC, f.device_id(i)) == expected[f.device_id(i)]
    # Nothing refused, but for one race: should both gateways' fleet-mirror ticks fall in the
    # same millisecond, Prometheus refuses the second copy (another value: last seen, counters)
    # as a duplicate with its whole request (docs/scaling.md); the samples above stay exact.
    letters = gw_a.http.get("/api/v1/dead-letters", params={"limit": 1000}).json()
    assert all("duplicate sample for timestamp" in row["reason"] for row in letters), letters

    # What the two gateways stamp themselves: each its own clock (see the docstring).
    info = vm_range(vm_dedup, "fleet_device_info")
    assert set(info) == set(expected)
    assert all(1 <= len(s) <= 2 and {v for _, v in s} == {1.0} for s in info.values())
    assert len(vm_dedup.query("fleet_device_info")) == len(DEVICES)  # one label set each
    for receiver in (vm_dedup, prom):
        up = receiver.query("fleet_device_up[1h]")
        assert {r["metric"]["device_id"] for r in up} == set(expected)
        assert {float(v) for r in up for _, v in r["values"]} == {1.0}


def test_a_member_restarting_while_the_other_dies_takes_the_gap_from_its_broker_session(
        pair: dict[str, GatewayProcess], mosquitto: Mosquitto,
        receivers: dict[str, Prometheus | VictoriaMetrics]) -> None:
    """gw-a stops (an upgrade) and, while it is down, gw-b dies for good: what the devices sent
    meanwhile is in the dead gw-b's buffer and in the broker's queue for gw-a's session only.
    gw-a, back, takes it from that queue: the receivers still hold every sample once."""
    gw_a, gw_b = pair["gw-a"], pair["gw-b"]
    base = f.now_ms() - 120_000
    fleet = PacedFleet(mosquitto.url, DEVICES, ROUNDS, base, ROUND_S)
    fleet.start()
    wait_for(lambda: forwarded_everywhere(gw_a, 60), 20, what="gw-a forwards 60 frames")
    gw_a.stop()  # SIGTERM: its persistent session (and from now on a queue) stay at the broker
    alone = fleet.sent
    wait_for(lambda: fleet.sent >= alone + 50, 20, what="50 frames while gw-a is down")
    gw_b.kill()
    missed_by_both = fleet.sent
    fleet.join(30)
    assert fleet.error is None and not fleet.is_alive()
    assert missed_by_both < fleet.sent, "the fleet had finished: no frame went to no gateway"
    gw_a.start()

    vm_dedup, prom = receivers["vm-dedup"], receivers["prometheus"]
    assert isinstance(vm_dedup, VictoriaMetrics) and isinstance(prom, Prometheus)
    expected = {f.device_id(i): [(base + s * 1000, f.sample_value(i, s)) for s in ROUNDS]
                for i in DEVICES}
    wait_for(lambda: gw_a.caught_up() and vm_range(vm_dedup, METRIC) == expected, 30,
             what="gw-a drains its session and VictoriaMetrics holds every sample once")
    for i in DEVICES:
        assert prom_samples(prom, METRIC, f.device_id(i)) == expected[f.device_id(i)]
