"""gateway.jobs: each background job's tick(now_ms) against in-memory collaborators (the real
FleetState and EventHub, SQLite in memory with the real migrations, fakes for the pipeline and
the forwarders), and the runner's rule: a tick that fails on SQLite is counted under its task
and the next tick goes on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest

from device_protocol import Birth
from gateway.buffer import store
from gateway.errors import StoreError
from gateway.fleet.events import EventHub
from gateway.fleet.series import fleet_metric_entries
from gateway.fleet.state import DeviceRecord, FleetState
from gateway.jobs import checkpoint as checkpoint_module
from gateway.jobs import fleet_metrics as fleet_metrics_module
from gateway.jobs.checkpoint import CheckpointJob
from gateway.jobs.fleet_metrics import FleetMetricsJob
from gateway.jobs.gauges import GaugesJob
from gateway.jobs.lifecycle import LifecycleJob
from gateway.jobs.maintenance import DAY_MS, PruneDedupStateJob, PruneEventsJob
from gateway.jobs.runner import Runner
from gateway.metrics import GatewayMetrics
from gateway.pipeline.dedup import LedgerKey
from gateway.remote_write.series import SeriesEncoder
from tests.support.fakes import MemoryStore

T0 = 1_790_000_000_000  # the gateway's clock at the start of each test
INTERVAL_MS = 1_000  # late after 2 intervals, offline after 6 (FleetState's defaults)
OFFLINE_AT = T0 + 6 * INTERVAL_MS


def birth(boot: int = 1) -> Birth:
    return Birth(boot, T0, "esp32-s3", "1.0.0", (("site", "lab"),), INTERVAL_MS, ())


def fleet_of(*device_ids: str) -> FleetState:
    """Devices born at T0 (boot 1); their online events not yet taken."""
    fleet = FleetState(started_ms=T0)
    for device_id in device_ids:
        fleet.observe_birth(device_id, birth(), T0)
    return fleet


def sample(metrics: GatewayMetrics, name: str, labels: dict[str, str]) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


@dataclass
class Boots:
    """Pipeline.close_boot: records the calls and what still_closed() said."""

    closed: list[tuple[str, int, bool]] = field(default_factory=list)

    async def close_boot(self, device_id: str, boot: int,
                         still_closed: Callable[[], bool]) -> int:
        self.closed.append((device_id, boot, still_closed()))
        return 1


# ---------------------------------------------------------------------- runner
class Failing:
    """A job whose tick fails like SQLite on a full disk while `full` is set."""

    def __init__(self) -> None:
        self.full = True
        self.ticks: list[int] = []

    async def tick(self, now_ms: int) -> None:
        if self.full:
            raise StoreError("database or disk is full", retryable=True)
        self.ticks.append(now_ms)


def test_a_failed_tick_is_counted_under_its_task_and_the_next_one_goes_on() -> None:
    metrics = GatewayMetrics()
    runner = Runner(metrics.background_errors, clock=lambda: T0)
    job = Failing()
    assert not run(runner.survive("fleet-checkpoint", job))
    assert not run(runner.survive("fleet-checkpoint", job))
    assert sample(metrics, "fleetgate_background_errors_total",
                  {"task": "fleet-checkpoint"}) == 2
    job.full = False
    assert run(runner.survive("fleet-checkpoint", job))
    assert run(runner.survive("gauges", job, now_ms=T0 + 5))
    assert job.ticks == [T0, T0 + 5]  # the runner's clock, or the time it is given
    assert sample(metrics, "fleetgate_background_errors_total", {"task": "gauges"}) is None


def test_an_error_that_is_not_sqlite_is_a_bug_and_is_raised() -> None:
    class Broken:
        async def tick(self, now_ms: int) -> None:
            raise KeyError("bug")

    with pytest.raises(KeyError):
        run(Runner(GatewayMetrics().background_errors).survive("lifecycle", Broken()))


class Recording:
    def __init__(self, name: str, log: list[str], done: asyncio.Event) -> None:
        self.name, self.log, self.done = name, log, done

    async def tick(self, now_ms: int) -> None:
        self.log.append(self.name)
        self.done.set()


def test_every_at_start_ticks_each_job_at_once_in_turn() -> None:
    async def go() -> list[str]:
        log: list[str] = []
        done = asyncio.Event()
        runner = Runner(GatewayMetrics().background_errors)
        loop = asyncio.ensure_future(runner.every(3600, ("a", Recording("a", log, asyncio.Event())),
                                                  ("b", Recording("b", log, done)),
                                                  at_start=True))
        await done.wait()
        loop.cancel()
        return log

    assert run(go()) == ["a", "b"]


def test_when_signalled_ticks_as_soon_as_the_signal_is_set() -> None:
    async def go() -> list[str]:
        log: list[str] = []
        done, signal = asyncio.Event(), asyncio.Event()
        runner = Runner(GatewayMetrics().background_errors)
        loop = asyncio.ensure_future(
            runner.when_signalled("lifecycle", Recording("x", log, done), signal, 3600))
        signal.set()
        await done.wait()
        loop.cancel()
        assert not signal.is_set()  # cleared for the next change
        return log

    assert run(go()) == ["x"]


# ---------------------------------------------------------------------- lifecycle
def lifecycle(fleet: FleetState, db: MemoryStore, boots: Boots | None = None
              ) -> tuple[LifecycleJob, EventHub, GatewayMetrics]:
    hub, metrics = EventHub(), GatewayMetrics()
    job = LifecycleJob(fleet, db, hub, metrics,
                       close_boot=boots.close_boot if boots is not None else None)
    return job, hub, metrics


def test_lifecycle_writes_and_streams_the_events_and_closes_a_silent_boot() -> None:
    db, boots = MemoryStore(), Boots()
    job, hub, metrics = lifecycle(fleet_of("d"), db, boots)
    stream = hub.subscribe()
    assert run(job.tick(T0 + 1)) == 1  # the online event of the birth
    assert run(job.tick(OFFLINE_AT)) == 1
    assert db.rows("SELECT id, device_id, state, previous, reason FROM device_events") == [
        (1, "d", "online", None, "birth"), (2, "d", "offline", "online", "timeout")]
    streamed = [stream.queue.get_nowait() for _ in range(stream.queue.qsize())]
    assert [(e["id"], e["state"]) for e in streamed] == [(1, "online"), (2, "offline")]
    assert sample(metrics, "fleetgate_device_events_total", {"event": "offline"}) == 1
    assert boots.closed == [("d", 1, True)]  # its stale markers, the device still offline


def test_lifecycle_without_an_endpoint_sends_no_stale_markers() -> None:
    db = MemoryStore()
    job, _, _ = lifecycle(fleet_of("d"), db)
    assert run(job.tick(OFFLINE_AT)) == 2
    assert db.rows("SELECT state FROM device_events") == [("online",), ("offline",)]


def test_lifecycle_keeps_its_events_through_a_full_disk_in_order() -> None:
    db = MemoryStore()
    job, _, metrics = lifecycle(fleet_of("d"), db)
    runner = Runner(metrics.background_errors)
    db.full = True
    assert not run(runner.survive("lifecycle", job, now_ms=OFFLINE_AT))
    assert sample(metrics, "fleetgate_background_errors_total", {"task": "lifecycle"}) == 1
    db.full = False
    assert run(runner.survive("lifecycle", job, now_ms=OFFLINE_AT + 1))
    assert db.rows("SELECT id, state FROM device_events") == [(1, "online"), (2, "offline")]


# ---------------------------------------------------------------------- fleet metrics
@dataclass
class Commits:
    """Pipeline.commit_entries: one frame per call."""

    frames: list[tuple[str, list[bytes]]] = field(default_factory=list)

    async def commit_entries(self, device_id: str, entries: Sequence[bytes]) -> int:
        self.frames.append((device_id, list(entries)))
        return len(self.frames)


def missing_of(record: DeviceRecord) -> int:
    return 3


def test_fleet_metrics_go_through_the_buffer_in_frames_of_bounded_size(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fleet_metrics_module, "ENTRIES_PER_FRAME", 4)
    fleet, encoder, commits = fleet_of("a", "b"), SeriesEncoder((("gw", "t"),)), Commits()
    job = FleetMetricsJob(fleet, encoder, missing_of, "gw-1", commits.commit_entries)
    written = run(job.tick(T0 + 500))
    expected = list(fleet_metric_entries(fleet, encoder, missing_of, "gw-1", T0 + 500))
    assert written == len(expected) > 4
    assert [entries for _, entries in commits.frames] == [
        expected[i:i + 4] for i in range(0, len(expected), 4)]
    assert {device_id for device_id, _ in commits.frames} == {""}  # the gateway's own frames


# ---------------------------------------------------------------------- checkpoint and gauges
@dataclass
class Status:
    sent_samples: int = 0


@dataclass
class Sender:
    """What the gauges read of a Forwarder."""

    endpoint: str
    cursor: int = 0
    status: Status = field(default_factory=Status)


class Clock:
    def __init__(self) -> None:
        self.s = 100.0

    def __call__(self) -> float:
        return self.s


def gauges(fleet: FleetState, db: MemoryStore, senders: Sequence[Sender] = (),
           committed: int = 0, clock: Clock | None = None) -> tuple[GaugesJob, GatewayMetrics]:
    metrics = GatewayMetrics()
    job = GaugesJob(fleet, senders, db, lambda: committed, metrics, monotonic=clock or Clock())
    return job, metrics


def test_checkpoint_writes_the_changed_devices_in_chunks_then_the_gauges(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoint_module, "CHECKPOINT_CHUNK", 2)
    fleet, db = fleet_of("a", "b", "c", "d", "e"), MemoryStore()
    gauge_job, metrics = gauges(fleet, db)
    run(CheckpointJob(fleet, db, gauge_job).tick(T0))
    assert db.rows("SELECT device_id, boot FROM devices ORDER BY 1") == [
        (d, 1) for d in "abcde"]
    assert db.writes == 3  # one transaction a chunk
    assert sample(metrics, "fleetgate_devices", {"state": "online"}) == 5
    run(CheckpointJob(fleet, db, gauge_job).tick(T0 + 1))
    assert db.writes == 3  # nothing changed since


def test_checkpoint_rows_not_written_on_a_full_disk_are_written_at_the_next_tick() -> None:
    fleet, db = fleet_of("a", "b"), MemoryStore()
    gauge_job, metrics = gauges(fleet, db)
    job, runner = CheckpointJob(fleet, db, gauge_job), Runner(metrics.background_errors)
    db.full = True
    assert not run(runner.survive("fleet-checkpoint", job, now_ms=T0))
    assert sample(metrics, "fleetgate_background_errors_total",
                  {"task": "fleet-checkpoint"}) == 1
    db.full = False
    assert run(runner.survive("fleet-checkpoint", job, now_ms=T0 + 30_000))
    assert db.rows("SELECT device_id FROM devices ORDER BY 1") == [("a",), ("b",)]


def frame_received_at(db: MemoryStore, frame_id: int, received_ms: int) -> None:
    db.conn.execute("BEGIN")
    store.write_batch(db.conn, store.BatchWrite(
        frames=[(frame_id, store.KIND_ENTRIES, "", 0, None, received_ms, b"x")]))
    db.conn.execute("COMMIT")


def test_gauges_show_each_endpoints_oldest_unsent_age_and_send_rate() -> None:
    db, clock = MemoryStore(), Clock()
    frame_received_at(db, 1, T0)
    frame_received_at(db, 2, T0 + 4_000)
    behind, caught_up = Sender("http://behind"), Sender("http://caught-up", cursor=2)
    job, metrics = gauges(fleet_of("a"), db, [behind, caught_up], committed=2, clock=clock)
    run(job.tick(T0 + 10_000))
    assert job.unsent_age_s == {"http://behind": 10.0, "http://caught-up": 0.0}
    assert sample(metrics, "fleetgate_oldest_unsent_age_seconds",
                  {"endpoint": "http://behind"}) == 10.0
    behind.cursor = 1
    caught_up.status.sent_samples = 100
    clock.s += 5
    run(job.tick(T0 + 15_000))
    assert job.unsent_age_s["http://behind"] == 11.0  # frame 2 is the oldest unsent now
    assert job.send_rate("http://caught-up") == 20.0  # 100 samples in 5 s
    assert job.send_rate("http://behind") == 0.0
    assert job.send_rate("http://unknown") == 0.0
    assert sample(metrics, "fleetgate_devices", {"state": "online"}) == 1


def test_the_gauges_after_a_checkpoint_are_as_of_its_end() -> None:
    db, fleet = MemoryStore(), fleet_of("a")
    frame_received_at(db, 1, T0)
    gauge_job, _ = gauges(fleet, db, [Sender("http://behind")], committed=1)
    run(CheckpointJob(fleet, db, gauge_job, clock=lambda: T0 + 9_000).tick(T0 + 1_000))
    assert gauge_job.unsent_age_s == {"http://behind": 9.0}


# ---------------------------------------------------------------------- maintenance
class Forgets:
    def __init__(self) -> None:
        self.forgotten: list[object] = []

    def forget(self, *key: object) -> None:
        self.forgotten.append(key[0] if len(key) == 1 else key)


@dataclass
class HeldAndClosed:
    closed_forgotten: list[LedgerKey] = field(default_factory=list)
    dropped_before: list[int] = field(default_factory=list)

    def forget_closed(self, keys: Sequence[LedgerKey]) -> None:
        self.closed_forgotten.extend(keys)

    def drop_held_before(self, before_ms: int) -> int:
        self.dropped_before.append(before_ms)
        return 1


def test_prune_dedup_state_checkpoints_first_then_forgets_past_boots_everywhere() -> None:
    now = T0 + 100 * DAY_MS
    fleet, db = FleetState(started_ms=T0), MemoryStore()
    fleet.observe_birth("a", birth(boot=2), now - 35 * DAY_MS)  # boot 2 is "a"'s current one
    db.conn.execute("BEGIN")
    store.write_batch(db.conn, store.BatchWrite(
        births=[("a", 1, now - 40 * DAY_MS, b"old", 0), ("a", 2, now - 35 * DAY_MS, b"cur", 0)],
        ledger=[("a", 1, "0-10", now - 40 * DAY_MS, None),
                ("a", 2, "0-10", now - 35 * DAY_MS, None)],
        held=[("c", 9, 0, now - 31 * DAY_MS, b"xx")]))
    db.conn.execute("COMMIT")
    gauge_job, metrics = gauges(fleet, db)
    ledger, births, compiler, pipeline = Forgets(), Forgets(), Forgets(), HeldAndClosed()
    job = PruneDedupStateJob(db, CheckpointJob(fleet, db, gauge_job), ledger, births, compiler,
                             pipeline, metrics, retention_days=30)
    run(job.tick(now))
    assert db.rows("SELECT device_id, boot FROM devices") == [("a", 2)]  # the checkpoint
    assert ledger.forgotten == [("a", 1)]
    assert pipeline.closed_forgotten == [("a", 1)]
    assert births.forgotten == compiler.forgotten == [("a", 1)]
    assert pipeline.dropped_before == [now - 30 * DAY_MS]
    assert sample(metrics, "fleetgate_frames_dropped_total",
                  {"reason": "held_without_birth"}) == 1
    assert db.rows("SELECT device_id, boot FROM ledger") == [("a", 2)]


def test_prune_events_deletes_events_older_than_the_retention() -> None:
    db = MemoryStore()
    job, _, _ = lifecycle(fleet_of("old"), db)
    run(job.tick(T0))
    prune = PruneEventsJob(db, retention_days=7)
    assert run(prune.tick(T0 + 7 * DAY_MS)) == 0
    assert run(prune.tick(T0 + 7 * DAY_MS + 1)) == 1
    assert db.rows("SELECT COUNT(*) FROM device_events") == [(0,)]


def test_prune_on_a_full_disk_is_counted_and_the_next_tick_goes_on() -> None:
    db, metrics = MemoryStore(), GatewayMetrics()
    runner, prune = Runner(metrics.background_errors), PruneEventsJob(db, retention_days=7)
    db.full = True
    assert not run(runner.survive("prune-events", prune, now_ms=T0))
    db.full = False
    assert run(runner.survive("prune-events", prune, now_ms=T0))
    assert sample(metrics, "fleetgate_background_errors_total", {"task": "prune-events"}) == 1
