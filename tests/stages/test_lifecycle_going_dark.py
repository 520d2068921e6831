"""A fleet that goes dark at once (issue 15): thousands of devices time out in the same sweep
while one device keeps sending. Their silent boots are closed a few hundred to a transaction
(Pipeline.close_boots via LifecycleJob), and the live device's frames are committed between
those transactions: observed in the buffer's commit order (frame ids), not with timings.
Every silent boot gets its stale markers exactly once, also when the gateway stopped half-way
through (closed boots are remembered in SQLite).

A real Pipeline on a SQLite file (tests.support.pipeline_harness); the lifecycle's FleetState
is the test's own, told of the births with explicit times."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import pytest

import tests.support.factories as f
from gateway.buffer import store
from gateway.errors import StoreError
from gateway.fleet.events import EventHub
from gateway.fleet.state import FleetState
from gateway.jobs import lifecycle as lifecycle_module
from gateway.jobs.lifecycle import LifecycleJob
from gateway.metrics import GatewayMetrics
from gateway.pipeline import stage
from gateway.pipeline.stage import Pipeline
from gateway.remote_write.wire import decode_write_request, is_stale_nan, split_entries
from tests.support.fakes import MemoryStore
from tests.support.pipeline_harness import Harness, birth_msg, run, tele_msg

T = TypeVar("T")

DARK = 2_000
LIVE = DARK + 1  # the device index that keeps sending
INTERVAL_MS = 60_000  # factories' births: offline after 6 intervals without a frame
T0 = 1_790_000_000_000  # the lifecycle's clock (the fleet's own)
DARK_AT = T0 + 6 * INTERVAL_MS


async def born_and_reporting(p: Pipeline, devices: range, base_ms: int) -> None:
    """Births, then one frame each: each boot has series to close."""
    for start in range(devices.start, devices.stop, 500):
        chunk = range(start, min(start + 500, devices.stop))
        await p.handle([birth_msg(i) for i in chunk])
        await p.handle([tele_msg(i, 0, base_ms) for i in chunk])


def lifecycle_fleet(devices: range) -> FleetState:
    fleet = FleetState(started_ms=T0)
    for i in devices:
        fleet.observe_birth(f.device_id(i), f.birth(i), T0)
    fleet.take_events()  # their online events: not what the test looks at
    return fleet


def lifecycle(h: Harness, fleet: FleetState) -> LifecycleJob:
    return LifecycleJob(fleet, h.db, EventHub(), GatewayMetrics(), close_boot=None,
                        close_boots=h.pipeline.close_boots)


def marker_frames(h: Harness) -> dict[str, list[int]]:
    """device id -> the number of stale markers in each of its gateway-made frames."""
    out: dict[str, list[int]] = {}
    for device_id, payload in h.rows(f"SELECT device_id, payload FROM frames WHERE kind = "
                                     f"{store.KIND_ENTRIES} ORDER BY id"):
        series = decode_write_request(b"".join(split_entries(payload)))
        assert all(is_stale_nan(v) for _, samples in series for v, _ in samples)
        out.setdefault(device_id, []).append(len(series))
    return out


def test_live_frames_commit_between_the_closes_of_a_fleet_gone_dark(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    sent: list[int] = []

    async def go() -> None:
        p = await h.open()
        base = f.now_ms() - 10_000
        await born_and_reporting(p, range(1, LIVE + 1), base)
        first_id = h.buffer.committed_upto + 1
        job = lifecycle(h, lifecycle_fleet(range(1, DARK + 1)))
        done = asyncio.Event()

        async def keep_sending() -> None:
            seq = 1
            while not done.is_set():
                await p.handle([tele_msg(LIVE, seq, base)])
                sent.append(seq)
                seq += 1

        sender = asyncio.ensure_future(keep_sending())
        assert await job.tick(DARK_AT) == DARK  # every dark device offline, once
        done.set()
        await sender
        assert await job.tick(DARK_AT + INTERVAL_MS) == 0
        order = h.rows(f"SELECT kind FROM frames WHERE id >= {first_id} ORDER BY id")
        # Runs of gateway-made frames (one transaction of boots each), split by live frames.
        kinds = "".join("m" if kind == store.KIND_ENTRIES else "t" for (kind,) in order)
        runs = [len(run) for run in kinds.split("t") if run]
        assert len(runs) >= 4  # the lock was given up at least every 500 boots
        assert runs == [stage.CLOSE_BOOTS_CHUNK] * (DARK // stage.CLOSE_BOOTS_CHUNK)
        await h.db.close()

    run(go)
    frames = marker_frames(h)
    # exactly one frame of markers per dark device: its 2 series and its fleet_device_info
    assert frames == {f.device_id(i): [3] for i in range(1, DARK + 1)}
    live = h.rows(f"SELECT COUNT(*) FROM frames WHERE device_id = '{f.device_id(LIVE)}'"
                  f" AND kind = {store.KIND_TELEMETRY}")
    assert live == [(1 + len(sent),)]


@pytest.mark.parametrize("saved", ["online", "offline"])
def test_a_stop_half_way_through_closes_each_boot_once(tmp_path: Path, saved: str) -> None:
    """The gateway closed the first 600 of 1,000 silent boots, then stopped. Its last
    checkpoint had the devices online (they time out again after the restart) or already
    offline (the checkpoint ran while the boots were being closed: the lifecycle's first tick
    closes the boots of devices gone offline within the lookback)."""
    h = Harness(tmp_path / "db")
    devices = range(1, 1_001)

    async def go() -> None:
        p = await h.open()
        await born_and_reporting(p, devices, f.now_ms() - 10_000)
        await p.close_boots([(f.device_id(i), f.boot_id(i), lambda: True)
                             for i in devices[:600]])
        await h.db.close()
        await h.open()
        fleet = lifecycle_fleet(devices)
        if saved == "offline":
            fleet.sweep(DARK_AT)
            fleet.take_events()
        events = await lifecycle(h, fleet).tick(DARK_AT + 1_000)
        assert events == (len(devices) if saved == "online" else 0)
        await h.db.close()

    run(go)
    assert marker_frames(h) == {f.device_id(i): [3] for i in devices}


class FailingOnce(MemoryStore):
    """Fails the nth write like a full disk, once."""

    def __init__(self, nth: int) -> None:
        super().__init__()
        self.countdown = nth

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        self.countdown -= 1
        if self.countdown == 0:
            raise StoreError("database or disk is full", retryable=True)
        return await super().write(fn)


def test_a_write_failing_half_way_closes_the_written_slices_boots_and_requeues_the_rest(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lifecycle_module, "SWEEP_CHUNK", 2)
    fleet = lifecycle_fleet(range(1, 6))
    db = FailingOnce(nth=2)
    closed: list[str] = []

    async def close_boots(boots: Sequence[tuple[str, int, Callable[[], bool]]]) -> int:
        closed.extend(device_id for device_id, _, still_closed in boots if still_closed())
        return len(boots)

    job = LifecycleJob(fleet, db, EventHub(), GatewayMetrics(), close_boot=None,
                       close_boots=close_boots)
    with pytest.raises(StoreError):
        asyncio.run(job.tick(DARK_AT))
    assert closed == [f.device_id(1), f.device_id(2)]  # their events were written
    assert asyncio.run(job.tick(DARK_AT + 1)) == 3  # the rest, in order
    assert closed == [f.device_id(i) for i in range(1, 6)]
    assert db.rows("SELECT device_id FROM device_events ORDER BY id") == [
        (f.device_id(i),) for i in range(1, 6)]
