"""Seeded random traffic against the ordering and once-only rules, under 503, 400, 413, splits.

Three devices send frames of 1 to 30 samples at random `dt` offsets (a gauge, a labelled gauge,
histograms), the request cap is random, and the receiver answers 503 or 400 now and then and
413 to requests above a random size. Whatever the mix, every sample is either accepted or in
the dead letters (exactly the samples of the requests answered 400), once; no request exceeds
the cap; and every series arrives in timestamp order across all requests (frames are 5 s apart
and offsets stay within 2 s, so no frame overlaps another in time).
FAULTS_LONG=1 runs 40 seeds instead of 4.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from tests.spec.device_frames import (
    GAUGE,
    HISTOGRAM,
    Message,
    birth_msg,
    histogram,
    now_ms,
    tele_msg,
)
from tests.spec.gateway_rig import LocalGateway
from tests.spec.rw_receiver import RecordingReceiver, Reply, Request
from tests.spec.rw_wire import Sample
from tests.spec.spec_cases import Key

SEEDS = range(40 if os.environ.get("FAULTS_LONG") == "1" else 4)
DEVICES = [f"rnd-{i}" for i in range(3)]


def traffic(rng: random.Random, base_ms: int) -> tuple[list[list[Message]], int]:
    """Births, then 25 frames per device; and how many samples they hold."""
    groups: list[list[Message]] = [[birth_msg(device=d)] for d in DEVICES]
    samples = 0
    for seq in range(25):
        for device in DEVICES:
            rows: list[list[Any]] = []
            for dt in rng.sample(range(-2000, 2000), rng.randint(1, 30)):
                kind = rng.random()
                if kind < 0.6:
                    rows.append([GAUGE, rng.random(), dt])
                elif kind < 0.8:
                    rows.append(["fan_rpm", rng.random(), dt, {"core": str(rng.randint(0, 2))}])
                else:
                    rows.append([HISTOGRAM, histogram(3, 0.5, [1, 2, 3]), dt])
                samples += 6 if kind >= 0.8 else 1
            groups.append([tele_msg(seq, rows, device=device, t_ms=base_ms + seq * 5000)])
    return groups, samples


def device_samples(batches: Iterable[list[tuple[Key, Sample]]]) -> Counter[tuple[Any, ...]]:
    return Counter((key, s.timestamp_ms, s.bits) for batch in batches for key, s in batch
                   if dict(key)["__name__"] != "fleet_device_info")


@pytest.mark.parametrize("seed", SEEDS)
def test_random_traffic_keeps_series_order_and_each_sample_once(
        tmp_path: Path, receiver: RecordingReceiver, seed: int) -> None:
    rng = random.Random(seed)  # the traffic (reproducible); the answers draw from their own
    answers = random.Random(-seed - 1)  # (the receiver's thread; their order follows timing)
    cap = rng.randint(5, 60)
    too_large = rng.choice([None, rng.randint(cap // 2 + 1, cap)])

    def respond(request: Request) -> Reply:
        if not request.sample_count:  # "bad data" is about samples: an empty request is taken
            return Reply(204)
        if too_large is not None and request.sample_count > too_large:
            return Reply(413)
        draw = answers.random()
        return Reply(503) if draw < 0.1 else Reply(400, b"bad data") if draw < 0.2 else Reply(204)

    receiver.responder = respond
    groups, expected = traffic(rng, now_ms() - 3_600_000)

    async def go() -> LocalGateway:
        async with LocalGateway(tmp_path / "buffer.db", receiver.url,
                                max_samples_per_request=cap) as gw:
            gw.start()
            for group in groups:
                await gw.publish(*group)
                if rng.random() < 0.2:
                    await asyncio.sleep(0.01)  # let the forwarder take partial batches too
            await gw.drain(within_s=60)
        return gw

    gw = asyncio.run(go())
    what = f"seed {seed}, cap {cap}, 413 above {too_large}"
    accepted = device_samples(r.samples() for r in receiver.snapshot() if r.accepted)
    refused = device_samples(r.samples() for r in receiver.snapshot() if r.status == 400)
    dead = device_samples([gw.dead_letter_samples()])
    assert dead == refused, f"{what}: the dead letters are not the refused requests"
    every = accepted + dead
    assert set(every.values()) == {1} and len(every) == expected, what
    assert max(r.sample_count for r in receiver.snapshot()) <= cap, what
    stamps: dict[Key, list[int]] = defaultdict(list)
    for r in receiver.snapshot():
        if r.accepted:
            for key, sample in r.samples():
                stamps[key].append(sample.timestamp_ms)
    back_in_time = [dict(k)["__name__"] for k, v in stamps.items() if v != sorted(v)]
    assert not back_in_time, f"{what}: {back_in_time}"
