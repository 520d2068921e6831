"""The fleet metrics are incremental (issue 15): after the first tick (a start: everything,
once), a tick writes what changed and a keep-alive slice of the fleet, so an unchanged device
is written once per keep-alive period instead of every tick, and no series goes more than
keep-alive + one tick without a sample (Prometheus's lookback is 5 minutes).

FleetMetricsJob against the real FleetState and SeriesEncoder, its frames caught at the
commit_entries seam and decoded as a receiver would."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

import tests.support.factories as f
from gateway.fleet.series import DEVICE_FRAMES, DEVICE_LAST_SEEN, DEVICE_UP, KeepAlive
from gateway.fleet.state import DeviceRecord, FleetState
from gateway.jobs.fleet_metrics import FLEET_METRICS_KEEPALIVE_S, FleetMetricsJob
from gateway.remote_write.series import SeriesEncoder
from gateway.remote_write.wire import decode_write_request

T0 = 1_790_000_000_000
TICK_MS = 60_000  # fleet_metrics_interval_s's default
KEEPALIVE_MS = int(FLEET_METRICS_KEEPALIVE_S * 1000)
FAMILIES = 6  # per device
Written = list[tuple[str, str, float]]  # (device_id or state, family, value)


class Receiver:
    """Pipeline.commit_entries: keeps what each tick wrote, decoded."""

    def __init__(self) -> None:
        self.written: Written = []

    async def commit_entries(self, device_id: str, entries: Sequence[bytes]) -> int:
        for labels, samples in decode_write_request(b"".join(entries)):
            who = labels.get("device_id") or labels["state"]
            self.written += [(who, labels["__name__"], value) for value, _ in samples]
        return 1

    def take(self) -> Written:
        written, self.written = self.written, []
        return written


def no_missing(record: DeviceRecord) -> int:
    return 0


def fleet_of(n: int) -> FleetState:
    fleet = FleetState(started_ms=T0)
    for i in range(n):
        fleet.observe_birth(f.device_id(i), f.birth(i, interval_ms=3_600_000), T0)
    return fleet


def job_of(fleet: FleetState) -> tuple[FleetMetricsJob, Receiver]:
    receiver = Receiver()
    return FleetMetricsJob(fleet, SeriesEncoder(), no_missing, "gw",
                           receiver.commit_entries), receiver


def tick(job: FleetMetricsJob, receiver: Receiver, now_ms: int) -> Written:
    asyncio.run(job.tick(now_ms))
    return receiver.take()


def devices_in(written: Written) -> dict[str, int]:
    """device -> how many of its families a tick wrote (fleet_devices left out)."""
    out: dict[str, int] = {}
    for who, family, _ in written:
        if family != "fleet_devices":
            out[who] = out.get(who, 0) + 1
    return out


def test_a_start_writes_every_family_of_every_device_once() -> None:
    fleet = fleet_of(50)
    job, receiver = job_of(fleet)
    written = tick(job, receiver, T0)
    assert devices_in(written) == {f.device_id(i): FAMILIES for i in range(50)}
    assert sum(family == "fleet_devices" for _, family, _ in written) == 3  # by state
    # A restart is a new job on the fleet loaded from the checkpoint: everything once again.
    again, receiver = job_of(fleet)
    assert devices_in(tick(again, receiver, T0 + 1_000)) == devices_in(written)


def test_unchanged_devices_are_written_once_per_keepalive_not_every_tick() -> None:
    fleet = fleet_of(100)
    job, receiver = job_of(fleet)
    tick(job, receiver, T0)
    for period in range(2):
        counts: dict[str, int] = {}
        per_tick = []
        for n in range(1, KEEPALIVE_MS // TICK_MS + 1):
            written = tick(job, receiver, T0 + (period * KEEPALIVE_MS) + n * TICK_MS)
            slice_ = devices_in(written)
            per_tick.append(len(slice_))
            assert set(slice_.values()) == {FAMILIES}  # a keep-alive writes a device whole
            for device_id in slice_:
                counts[device_id] = counts.get(device_id, 0) + 1
            assert sum(family == "fleet_devices" for _, family, _ in written) == 3
        assert counts == {f.device_id(i): 1 for i in range(100)}  # each once per period
        assert max(per_tick) - min(per_tick) <= 1  # spread evenly over the ticks


def test_a_changed_device_is_written_at_the_next_tick_with_what_changed() -> None:
    fleet = fleet_of(100)
    job, receiver = job_of(fleet)
    tick(job, receiver, T0)
    busy, dead = f.device_id(7), f.device_id(8)
    frame = f.decoded_frame(f.boot_id(7), 0, T0 + 30_000, [])
    fleet.observe_telemetry(busy, frame, T0 + 30_000)
    fleet.observe_death(dead, f.boot_id(8), T0 + 31_000)
    written = tick(job, receiver, T0 + TICK_MS)
    keepalive = {who for who, n in devices_in(written).items() if n == FAMILIES}
    mine = {(who, family): value for who, family, value in written if who in (busy, dead)}
    if busy not in keepalive:  # the families a frame changes, not the others
        assert {family for who, family in mine if who == busy} == {DEVICE_LAST_SEEN,
                                                                   DEVICE_FRAMES}
    assert mine[busy, DEVICE_LAST_SEEN] == (T0 + 30_000) / 1000
    assert mine[busy, DEVICE_FRAMES] == 1
    assert mine[dead, DEVICE_UP] == 0  # its state changed: up goes down at once
    # Nothing changed since: the next tick has only its keep-alive slice.
    written = tick(job, receiver, T0 + 2 * TICK_MS)
    assert set(devices_in(written).values()) == {FAMILIES}
    assert len(devices_in(written)) < 50


def test_no_series_goes_longer_than_keepalive_plus_a_tick_without_a_sample() -> None:
    """Random traffic over 30 minutes, devices born and forgotten meanwhile, ticks late by up
    to 10 s: every family of every device known throughout is written at least every
    keep-alive + one tick."""
    rng = random.Random(15)
    fleet = fleet_of(200)
    job, receiver = job_of(fleet)
    last: dict[tuple[str, str], int] = {}
    worst = 0
    now = T0
    born = 200
    for n in range(31):
        for who, family, _ in tick(job, receiver, now):
            if family != "fleet_devices":
                previous = last.get((who, family))
                if previous is not None:
                    worst = max(worst, now - previous)
                last[who, family] = now
        if n == 30:
            break  # the last tick: nothing changes after it
        for _ in range(rng.randrange(40)):
            i = rng.randrange(born)
            fleet.observe_telemetry(f.device_id(i), f.decoded_frame(f.boot_id(i), n, now, []),
                                    now)
        fleet.observe_birth(f.device_id(born), f.birth(born), now)  # a newcomer every tick
        born += 1
        gone = f.device_id(rng.randrange(born))
        if fleet.forget(gone):  # its series end at the receiver's lookback, as before
            last = {key: ms for key, ms in last.items() if key[0] != gone}
        now += TICK_MS + rng.randrange(10_000)
    bound = KEEPALIVE_MS + TICK_MS + 10_000
    assert 0 < worst <= bound
    # ... and none was left behind since its last sample (written once, then never again)
    known = {(who, family) for who, family in last if who in fleet.devices}
    assert len(known) == FAMILIES * len(fleet.devices)
    assert max(now - last[key] for key in known) <= bound


def test_the_keepalive_resumes_after_the_last_id_when_devices_come_and_go() -> None:
    keepalive = KeepAlive(period_ms=3)
    assert keepalive.due(["a", "b", "c"], 0) == []  # the clock starts
    assert keepalive.due(["a", "b", "c"], 1) == ["a"]
    assert keepalive.due(["a", "b", "c"], 2) == ["b"]
    assert keepalive.due(["a", "a0", "b", "c"], 3) == ["c"]  # "a0" came in behind the cursor
    assert keepalive.due(["a", "a0", "c"], 4) == ["a"]  # "b" forgotten: around again
    assert keepalive.due(["a", "a0", "c"], 5) == ["a0"]
    assert keepalive.due(["a", "a0", "c"], 100) == ["c", "a", "a0"]  # a long pause: all, once
