"""Hostile input on real topics: the gateway stays up and counts every message.

Short in `make test` (3,000 payloads); `make faults` runs 100,000. The payloads come from a
seeded generator (reproducible): random bytes, random msgpack structures, valid frames with one
field broken, truncated and oversized frames, deep nesting, absurd container headers, and
frames from unknown boots. Valid frames are mixed in and must all arrive.
"""

from __future__ import annotations

import random

import msgpack

import tests.support.factories as f
import tests.support.publisher as publisher
from devstack import GatewayProcess, Mosquitto, VictoriaMetrics, wait_for
from tests.faults.conftest import FaultReport
from tests.faults.probes import GatewayFactory
from tests.support.publisher import Publisher
from tests.support.receivers import expected_temperatures, vm_account

GOOD_DEVICES = range(3)


def hostile_payload(rng: random.Random, base_ms: int) -> bytes:
    kind = rng.randrange(9)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 200))
    if kind == 1:
        return msgpack.packb(random_structure(rng, 4))
    # A frame one edit away from valid. Some edits leave it valid: its samples go to a series
    # of their own, so they never pass for (or double) the good devices' samples.
    good = {"v": 1, "b": f.boot_id(0), "s": rng.randrange(10**6, 2 * 10**6), "t": base_ms,
            "m": [["hostile_metric", 1.0]]}
    if kind == 2:  # one field of a valid frame broken
        key = rng.choice(list(good))
        good[key] = random_structure(rng, 1)
        return msgpack.packb(good)
    if kind == 3:  # truncated
        payload = msgpack.packb(good)
        return payload[: rng.randrange(len(payload))]
    if kind == 4:  # oversized
        good["pad"] = "x" * rng.randrange(66_000, 120_000)
        return msgpack.packb(good)
    if kind == 5:  # deep nesting
        depth = rng.randrange(100, 5000)
        return b"\x91" * depth + b"\x01"
    if kind == 6:  # an array header claiming billions of entries
        return b"\xdd\xff\xff\xff\xff" + rng.randbytes(8)
    if kind == 7:  # bad samples
        good["m"] = [random_structure(rng, 2) for _ in range(rng.randrange(1, 5))]
        return msgpack.packb(good)
    good["b"] = rng.randrange(2**32)  # a boot nobody announced: held, never lost
    return msgpack.packb(good)


def random_structure(rng: random.Random, depth: int) -> object:
    choice = rng.randrange(8 if depth > 0 else 6)
    if choice == 0:
        return rng.randrange(-(2**63), 2**64)
    if choice == 1:
        return rng.random() * 10 ** rng.randrange(-5, 30)
    if choice == 2:
        return rng.choice([float("nan"), float("inf"), True, None])
    if choice == 3:
        return "".join(rng.choice("ab_-9é\x00") for _ in range(rng.randrange(8)))
    if choice == 4:
        return rng.randbytes(rng.randrange(8))
    if choice == 5:
        return rng.choice(["v", "b", "s", "t", "m", "h", 0, 1])
    if choice == 6:
        return [random_structure(rng, depth - 1) for _ in range(rng.randrange(4))]
    return {str(random_structure(rng, 0)): random_structure(rng, depth - 1)
            for _ in range(rng.randrange(4))}


def test_hostile_payloads_are_all_counted_and_the_good_frames_around_them_arrive(
        mosquitto: Mosquitto, victoria_metrics: VictoriaMetrics, gateway_factory: GatewayFactory,
        long_run: bool, fault_report: FaultReport) -> None:
    """Hostile input on real topics (3,000 seeded payloads; 100,000 in the long run)."""
    hostile_count = 100_000 if long_run else 3_000
    gw: GatewayProcess = gateway_factory(mosquitto, victoria_metrics)
    rng = random.Random(20261122)
    base = f.now_ms() - 120_000
    good = publisher.telemetry(GOOD_DEVICES, range(50), base)
    topics = [f"fleet/{f.device_id(i)}/{kind}" for i in range(5)
              for kind in ("telemetry", "telemetry", "birth", "death")]
    messages: list[tuple[str, bytes]] = []
    good_iter = iter(good)
    for n in range(hostile_count):
        messages.append((rng.choice(topics), hostile_payload(rng, base)))
        if n % (hostile_count // len(good)) == 0:
            messages.append(next(good_iter, None) or good[-1])
    messages.extend(good_iter)  # whatever is left
    with Publisher(mosquitto.url) as pub:
        pub.publish(publisher.births(GOOD_DEVICES))
        for start in range(0, len(messages), 5000):
            pub.publish(messages[start:start + 5000])
    total = len(GOOD_DEVICES) + len(messages)

    wait_for(lambda: gw.metric("fleetgate_frames_received_total") == total and gw.caught_up(),
             60 if not long_run else 600, what=f"all {total} messages counted")
    assert gw.http.get("/readyz").status_code == 200  # still up, still ready
    assert gw.is_running
    invalid = gw.metric("fleetgate_frames_invalid_total")
    assert invalid > 0.5 * hostile_count  # most hostile payloads are refused, with a reason
    lost, doubled = vm_account(victoria_metrics, "device_temperature_celsius",
                               expected_temperatures(GOOD_DEVICES, range(50)))
    quarantine = gw.http.get("/api/v1/quarantine", params={"limit": 1000}).json()
    assert quarantine and all(q["reason"] for q in quarantine)
    held = gw.metric("fleetgate_frames_held")
    fault_report.record(
        frames_in=total, samples_in=150, samples_out=150 - lost, lost=lost, doubled=doubled,
        note=f"{hostile_count:,} hostile payloads, every one counted: {invalid:,.0f} "
             f"quarantined as invalid, {held:,.0f} held for a birth, the rest valid; "
             f"gateway up and ready throughout; samples: the good devices' frames")
    assert (lost, doubled) == (0, 0)
