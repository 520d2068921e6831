"""A seeded random schedule of real faults while a seeded random fleet publishes.

One `random.Random(seed)` draws the fleet (tests/faults/seeded_fleet.py) and a schedule of
faults, one after another with random gaps: the gateway killed with SIGKILL (restarted at once
or after a pause), Mosquitto restarted, and a partition, 30 % loss or 2 s latency on the broker
hop or the receiver hop (tests/faults/netns.py) for a random time. Afterwards every sample must
be at VictoriaMetrics:

- lost: 0, always;
- doubled: 0, except the one at-least-once window of the design: a SIGKILL between a receiver's
  2xx and the cursor commit resends that one request, so each kill may double at most one
  request's temperature samples (`remote_write_max_samples` / 2 per kill: each frame carries
  two samples). Those are reported as "resent at a kill"; anything beyond fails.

Reproduce a run with FAULTS_SEED=<seed> (the seed is in the report's note and in the failure).
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack import wait_for
from tests.faults import seeded_fleet
from tests.faults.conftest import FaultReport
from tests.faults.netstack import NetStack, gateway_in_netns
from tests.faults.probes import FAST_RETRY, readyz

pytestmark = pytest.mark.e2e

MAX_SAMPLES = 200
SETTINGS = {**FAST_RETRY, "remote_write_max_samples": str(MAX_SAMPLES)}
RESEND_BOUND_PER_KILL = MAX_SAMPLES // seeded_fleet.SAMPLES_PER_FRAME


@dataclass(frozen=True)
class Event:
    kind: str  # "kill", "broker_restart", or a fault of netns.FAULTS
    hop: str = ""
    hold_s: float = 0.0  # how long a fault is held, or a killed gateway stays down
    gap_s: float = 0.0  # quiet time before the event

    def __str__(self) -> str:
        if self.kind in ("kill", "broker_restart"):
            return self.kind + (f" (down {self.hold_s:.1f} s)" if self.hold_s else "")
        return f"{self.kind} {self.hop} {self.hold_s:.1f} s"


def schedule(rng: random.Random, events: int, max_hold_s: float) -> list[Event]:
    kinds = ["kill", "kill", "broker_restart", "partition", "loss", "latency"]
    out = []
    for _ in range(events):
        kind = rng.choice(kinds)
        gap = rng.uniform(0.2, 1.5)
        if kind == "kill":
            out.append(Event(kind, hold_s=rng.choice((0.0, rng.uniform(0.5, 3.0))), gap_s=gap))
        elif kind == "broker_restart":
            out.append(Event(kind, gap_s=gap))
        else:
            out.append(Event(kind, rng.choice(("mqtt", "rw")), rng.uniform(1.0, max_hold_s),
                             gap))
    return out


def run_event(net: NetStack, event: Event) -> None:
    # The schedule's gaps and holds are the point here, not conditions to await.
    time.sleep(event.gap_s)
    if event.kind == "kill":
        net.gw.kill()
        time.sleep(event.hold_s)
        net.gw.start()  # same data dir, same MQTT session
    elif event.kind == "broker_restart":
        net.mosquitto.stop()
        net.mosquitto.start()  # same port, same persistence
        wait_for(lambda: readyz(net.gw) == 200, 120, what="the gateway back on the broker")
    else:
        net.netns.apply(event.hop, event.kind)
        time.sleep(event.hold_s)
        net.netns.heal(event.hop)


def _seeds(long_run: bool) -> list[int]:
    if os.environ.get("FAULTS_SEED"):
        return [int(os.environ["FAULTS_SEED"])]
    return [7, 8, 9] if long_run else [7]


@pytest.mark.parametrize("seed", _seeds(os.environ.get("FAULTS_LONG", "") not in ("", "0")))
def test_seeded_fault_schedule(seed: int, tmp_path: Path, fault_report: FaultReport,
                               long_run: bool) -> None:
    """Seeded random schedule of kill -9, broker restarts and network faults on both hops."""
    rng = random.Random(seed)
    events = schedule(rng, 25 if long_run else 5, max_hold_s=20.0 if long_run else 3.0)
    fleet_plan = seeded_fleet.plan(rng.randrange(2**31), devices=12,
                                   frames_per_device=400 if long_run else 50)
    total = len(fleet_plan.messages)
    print(f"\nseed {seed}: " + ", ".join(map(str, events)))
    with gateway_in_netns(tmp_path, seed, **SETTINGS) as net:
        fleet = seeded_fleet.PlanPublisher(net.mosquitto.url, fleet_plan,
                                           per_round=6 if long_run else 10, round_s=0.1)
        fleet.start()
        wait_for(lambda: fleet.sent >= total // 10, 60, what="the fleet under way")
        for event in events:
            run_event(net, event)
        fleet.finish(600)
        lost, doubled = net.settle(fleet_plan)
        alive = net.gw.is_running
    kills = sum(1 for e in events if e.kind == "kill")
    bound = kills * RESEND_BOUND_PER_KILL
    kinds = Counter(e.kind + (f" {e.hop}" if e.hop else "") for e in events)
    samples = fleet_plan.samples
    fault_report.scenario = "Seeded random schedule of kill -9, broker restarts and network faults"
    fault_report.record(
        frames_in=total, samples_in=samples, samples_out=samples - lost, lost=lost,
        doubled=doubled if doubled > bound else 0, resent=doubled if doubled <= bound else 0,
        note=f"seed {seed}: {len(events)} events ("
             + ", ".join(f"{n}x {k}" for k, n in sorted(kinds.items()))
             + f"); resend bound {RESEND_BOUND_PER_KILL} samples per kill; "
             f"{fleet_plan.describe()}")
    assert alive
    assert lost == 0, f"seed {seed}: {lost} samples lost"
    assert doubled <= bound, f"seed {seed}: {doubled} doubled, more than {bound} ({kills} kills)"
