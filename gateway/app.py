"""Wiring and lifecycle: the one place where the stages meet.

    MqttIngest -> Inbox -> Pipeline (decode, dedup, store, ack) -> EntryCache/SQLite
                                                                -> Forwarder per endpoint
    FleetState and the API beside them, on the same event loop. The lifecycle task moves
    devices to late/offline, writes their events, streams them (EventHub) and sends stale
    markers; the fleet-metrics task writes the fleet as metrics through the buffer.

Shutdown order (SIGTERM/SIGINT): stop ingest (unacked messages stay at the broker), commit what
is in hand, try a last forward under a deadline, checkpoint the fleet, close the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import signal
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any

import uvicorn

from device_protocol import Limits
from gateway.buffer import recovery, store
from gateway.buffer.datadir_lock import DataDirLock
from gateway.buffer.db import Database
from gateway.buffer.entry_cache import EntryCache, serves_next_frame_of
from gateway.errors import ConfigError, StoreError
from gateway.fleet import completeness
from gateway.fleet.events import EventHub
from gateway.fleet.series import FleetCollector, fleet_metric_entries
from gateway.fleet.state import DeviceRecord, FleetState
from gateway.forward.client import HttpRemoteWriteClient
from gateway.forward.forwarder import Forwarder
from gateway.ingest.mqtt import Inbox, MqttIngest
from gateway.metrics import GatewayMetrics
from gateway.pipeline.births import BirthRegistry
from gateway.pipeline.frame_compiler import FrameCompiler
from gateway.pipeline.series_budget import SeriesBudget
from gateway.pipeline.stage import Pipeline, restore_state
from gateway.remote_write.series import SeriesEncoder
from gateway.settings import Settings, parse_listen

log = logging.getLogger(__name__)

GAUGE_INTERVAL_S = 5.0  # device counts and the oldest unsent age, for alerting
# Fleet state is advisory: losing 30 s of "last seen" to a kill is harmless, while writing it
# encodes every active device's latest values (at 10,000 devices every 5 s: 9% of the CPU).
FLEET_CHECKPOINT_INTERVAL_S = 30.0
CHECKPOINT_CHUNK = 250  # device rows built and written at a time (~10 ms of the loop)
MAINTENANCE_INTERVAL_S = 3600.0  # pruning past boots' dedup state is slow-moving work
LIFECYCLE_TICK_S = 1.0  # late/offline found within a second; events written within one
ENTRIES_PER_FRAME = 2000  # gateway-made entries (stale markers, fleet metrics) per buffer frame


class _EmbeddedServer(uvicorn.Server):
    """uvicorn inside our loop: the gateway, not uvicorn, owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Gateway:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = GatewayMetrics()
        self.started_ms = int(time.time() * 1000)
        self.fleet = FleetState(late_after_intervals=settings.device_late_after_intervals,
                                offline_after_intervals=settings.device_offline_after_intervals,
                                started_ms=self.started_ms)
        self.series_budget = SeriesBudget(settings.device_series_budget)
        self.events = EventHub()
        self._fleet_changed = asyncio.Event()
        self.metrics.registry.register(FleetCollector(self.fleet))
        self.births = BirthRegistry()
        self.cache = EntryCache()
        self.db = Database(settings.store_config().db_path, settings.sqlite_synchronous,
                           startup_check=settings.sqlite_startup_check,
                           endpoints=settings.forward_config().endpoints)
        self.lock = DataDirLock(settings.data_dir)
        self.forwarders: list[Forwarder] = []
        self.unsent_age_s: dict[str, float] = {}
        # (monotonic s, samples sent) per endpoint, every GAUGE_INTERVAL_S over the last minute
        self._sent_history: dict[str, deque[tuple[float, int]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stop_requested = asyncio.Event()
        self._server: _EmbeddedServer | None = None
        self.ingest: MqttIngest
        self.pipeline: Pipeline
        self.inbox: Inbox

    # ------------------------------------------------------------------ start
    async def start(self) -> None:
        s = self.settings
        self.lock.acquire()  # before the database: recovery may move files aside
        await self.db.open()
        state = await self.db.read(store.load_state)
        self._restore(state)
        loop = asyncio.get_running_loop()
        mqtt_config = s.mqtt_config()
        self.inbox = Inbox(loop, mqtt_config.max_in_hand)
        self.ingest = MqttIngest(mqtt_config, self.inbox,
                                 on_connection_change=self.metrics.mqtt_connected.set)
        forward = s.forward_config()
        self.compiler = compiler = FrameCompiler(SeriesEncoder(forward.external_labels),
                                                 budget=self.series_budget)
        self.pipeline = Pipeline(
            db=self.db, mqtt=self.ingest, config=s.store_config(),
            limits=Limits(max_payload_bytes=s.max_frame_bytes,
                          max_samples=s.max_samples_per_frame,
                          max_future_skew_ms=int(s.max_clock_skew_s * 1000)),
            topic_prefix=s.topic_prefix, compiler=compiler, births=self.births,
            ledger=self.ledger, fleet=self.fleet, cache=self.cache, metrics=self.metrics,
            next_frame_id=state.next_frame_id, buffer_bytes=state.buffer_bytes,
            buffer_frames=state.buffer_frames, held=self._held, on_committed=self._on_committed,
            forwarders_keeping_up=self._forwarders_keeping_up,
            on_fleet_change=self._on_fleet_change, closed_boots=self._closed_boots)
        for endpoint in forward.endpoints:
            self.forwarders.append(Forwarder(
                endpoint=endpoint,
                client=HttpRemoteWriteClient(endpoint, timeout_s=forward.request_timeout_s),
                db=self.db, config=forward, cache=self.cache, births=self.births,
                compiler=compiler, metrics=self.metrics, cursor=state.cursors.get(endpoint, 0),
                all_endpoints=forward.endpoints,
                committed_upto=lambda: self.pipeline.committed_upto, on_progress=self._on_progress,
                live_lane=state.live_lanes.get(endpoint),
                cursor_offset=state.cursor_offsets.get(endpoint, 0),
                live_offset=state.live_offsets.get(endpoint, 0)))
        self.metrics.buffer_frames.set(state.buffer_frames)
        self.metrics.buffer_bytes.set(state.buffer_bytes)
        self.metrics.store_recoveries.inc(state.counters.get(recovery.COUNTER_RECOVERIES, 0))
        self.metrics.store_unreadable_frames.inc(
            state.counters.get(recovery.COUNTER_UNREADABLE_FRAMES, 0))
        await self._start_api()  # first: a taken port fails the start before MQTT is touched
        self.ingest.start()
        self._spawn(self.pipeline.run(self.inbox), "pipeline")
        for forwarder in self.forwarders:
            self._spawn(forwarder.run(), f"forward:{forwarder.endpoint}")
        self._spawn(self._checkpoint_loop(), "fleet-checkpoint")
        self._spawn(self._lifecycle_loop(), "lifecycle")
        if s.fleet_metrics_interval_s and self.forwarders:
            self._spawn(self._fleet_metrics_loop(s.fleet_metrics_interval_s), "fleet-metrics")
        if not s.api_tokens:
            log.warning("api_tokens is empty: the operator API is open to anyone who can reach "
                        "%s (set FLEETGATE_API_TOKENS=token:read,token:admin)", s.api_listen)
        self._spawn(self._maintenance_loop(), "maintenance")
        log.info("fleetgate %s started: mqtt %s, %d endpoint(s), buffer %d frames, db %s",
                 s.gateway_id, s.mqtt_url, len(self.forwarders), state.buffer_frames, self.db.path)

    def _restore(self, state: store.StoredState) -> None:
        restored = restore_state(state, self.settings.ledger_max_ranges,
                                 clock_tolerance_ms=int(self.settings.max_clock_skew_s * 1000))
        self.ledger, self.births, self._held = restored.ledger, restored.births, restored.held
        self._closed_boots = restored.closed_boots
        self.fleet.load(state.devices, self.births.get)
        for device_id, _boot in self.ledger.keys_with_gaps():  # the fleet's set is memory only
            self.fleet.observe_gaps(device_id)
        for device_id, boot in self.ledger.keys():  # boots stored after the last checkpoint
            self.fleet.note_boot(device_id, boot)

    async def _start_api(self) -> None:
        from gateway.api.routes import (
            create_api,  # FastAPI import is heavy; keep it out of unit tests
        )

        host, port = parse_listen(self.settings.api_listen)
        # Bind here, not in uvicorn: its bind failure is a SystemExit that would tear down the
        # event loop instead of a clear error.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only on sockets whose proto says
        # TCP, and accepted sockets inherit proto 0 from socket(family, SOCK_STREAM). Without
        # it every small answer (headers, then body) waited 40 ms for a delayed ACK.
        listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((host, port))
        except OSError as exc:
            listener.close()
            raise ConfigError(f"the API could not listen on {self.settings.api_listen}: {exc}",
                              hint="another process holds the port? set api_listen") from exc
        config = uvicorn.Config(create_api(self), log_level="warning", lifespan="off",
                                access_log=False, timeout_graceful_shutdown=2)
        self._server = _EmbeddedServer(config)
        self._spawn(self._server.serve(sockets=[listener]), "api")
        while not self._server.started:  # uvicorn sets a flag, no event to await
            if self._server_task_failed():
                raise ConfigError(f"the API on {self.settings.api_listen} did not start")
            await asyncio.sleep(0.01)

    def _server_task_failed(self) -> bool:
        task = next(t for t in self._tasks if t.get_name() == "api")
        return task.done()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        log.critical("task %s failed: %r; shutting down", task.get_name(), task.exception(),
                     exc_info=task.exception())
        self.failed = True
        self._stop_requested.set()

    failed = False

    # ------------------------------------------------------------------ callbacks
    def _on_committed(self, frame_id: int) -> None:
        for forwarder in self.forwarders:
            forwarder.notify()

    def _forwarders_keeping_up(self) -> bool:
        """Every forwarder is healthy and takes its next frame from the cache: only then is it
        worth holding ingest so they stay there. One draining a backlog from SQLite is past
        that; holding ingest would only make live data wait behind the backlog at the broker."""
        forwarders = self.forwarders
        return (bool(forwarders) and not any(f.retrying for f in forwarders)
                and serves_next_frame_of(self.cache, (f.cursor for f in forwarders)))

    def _on_fleet_change(self) -> None:
        if self.fleet.has_events():
            self._fleet_changed.set()

    def missing_of(self, record: DeviceRecord) -> int:
        """Seqs missing in the device's known boots (0 at once for a device without gaps)."""
        if record.device_id not in self.fleet.incomplete:
            return 0
        return completeness.totals(record, self.pipeline.ledger)[1]

    def _on_progress(self, frames: int, size: int) -> None:
        self.pipeline.freed(frames, size)
        if self.forwarders:
            self.cache.evict_upto(min(f.cursor for f in self.forwarders))

    async def survive(self, task: str, step: Callable[[], Awaitable[object]]) -> bool:
        """Run one tick of a background loop; a SQLite error (a full disk, an I/O error) is
        logged and counted, and the loop goes on at its next tick: these loops own nothing
        that a failed tick loses (checkpoint rows and events are kept for the next one), and a
        dead loop would take the gateway down into a supervisor's restart loop."""
        try:
            await step()
            return True
        except StoreError as exc:
            self.metrics.background_errors.labels(task).inc()
            log.error("%s failed, retried at its next tick: %s", task, exc)
            return False

    async def _checkpoint_loop(self) -> None:
        loop = asyncio.get_running_loop()
        checkpointed = loop.time()
        while True:
            await asyncio.sleep(GAUGE_INTERVAL_S)
            if loop.time() - checkpointed >= FLEET_CHECKPOINT_INTERVAL_S:
                checkpointed = loop.time()
                await self.survive("fleet-checkpoint", self.checkpoint)
            else:
                await self.survive("gauges", self.update_gauges)

    async def _maintenance_loop(self) -> None:
        while True:
            await self.survive("prune-dedup-state", self.prune_dedup_state)
            await self.survive("prune-events", self.prune_events)
            await asyncio.sleep(MAINTENANCE_INTERVAL_S)

    async def prune_events(self, now_ms: int | None = None) -> int:
        now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        before_ms = now_ms - int(self.settings.device_event_retention_days * 86_400_000)
        return await self.db.write(lambda conn: store.prune_events(conn, before_ms))

    async def _lifecycle_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._fleet_changed.wait(), LIFECYCLE_TICK_S)
            self._fleet_changed.clear()
            await self.survive("lifecycle", self.process_fleet_events)

    async def process_fleet_events(self, now_ms: int | None = None) -> int:
        """Sweep for late/offline devices; write, stream and act on the events. Returns how
        many events there were."""
        self.fleet.sweep(now_ms if now_ms is not None else int(time.time() * 1000))
        events = await self._write_events()
        for event in events:
            # Deaths and reboots are closed by the pipeline, in arrival order; a timeout here.
            if (event.kind == "state" and event.state == "offline"
                    and event.reason == "timeout" and event.boot is not None):
                await self._close_silent_boot(event.device_id, event.boot)
        return len(events)

    async def _write_events(self) -> list[Any]:
        events = self.fleet.take_events()
        if not events:
            return events
        rows = [(e.device_id, e.ts_ms, e.kind, e.state, e.previous, e.boot, e.previous_boot,
                 e.reason) for e in events]
        try:
            first_id = await self.db.write(lambda conn: store.insert_events(conn, rows))
        except StoreError:
            self.fleet.requeue_events(events)  # written at the next tick, in order
            raise
        self.events.publish(e.as_dict(first_id + i) for i, e in enumerate(events))
        for e in events:
            self.metrics.device_events.labels(e.state or e.kind).inc()
        return events

    async def _close_silent_boot(self, device_id: str, boot: int) -> None:
        def still_offline() -> bool:
            record = self.fleet.devices.get(device_id)
            return record is not None and not record.online and record.boot == boot

        if self.forwarders:
            await self.pipeline.close_boot(device_id, boot, still_offline)

    async def _fleet_metrics_loop(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.survive("fleet-metrics", self.write_fleet_metrics)

    async def write_fleet_metrics(self, now_ms: int | None = None) -> int:
        """The fleet as metrics, through the buffer to every endpoint. Returns the entries."""
        now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        chunk: list[bytes] = []
        written = 0
        for entry in fleet_metric_entries(self.fleet, self.compiler.encoder, self.missing_of,
                                          self.settings.gateway_id, now_ms):
            chunk.append(entry)
            if len(chunk) >= ENTRIES_PER_FRAME:
                await self.pipeline.commit_entries("", chunk)
                written += len(chunk)
                chunk = []
        if chunk:
            await self.pipeline.commit_entries("", chunk)
            written += len(chunk)
        return written

    async def prune_dedup_state(self, now_ms: int | None = None) -> None:
        """Forget past boots' ledgers and births, and held frames whose birth never came."""
        now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        before_ms = now_ms - int(self.settings.dedup_retention_days * 86_400_000)
        await self.checkpoint()  # devices.boot must be current: the current boot is kept
        ledger_keys, birth_keys, held = await self.db.write(
            lambda conn: store.prune_dedup_state(conn, before_ms))
        for key in ledger_keys:
            self.ledger.forget(key)
        self.pipeline.forget_closed(ledger_keys)
        for device_id, boot in birth_keys:
            self.births.forget(device_id, boot)
            self.compiler.forget(device_id, boot)
        if held:
            dropped = self.pipeline.drop_held_before(before_ms)
            self.metrics.frames_dropped.labels("held_without_birth").inc(dropped)
            log.warning("dropped %d held frames whose birth never came within %.0f days",
                        dropped, self.settings.dedup_retention_days)
        if ledger_keys or birth_keys:
            log.info("forgot dedup state of %d past boots and %d births", len(ledger_keys),
                     len(birth_keys))

    async def checkpoint(self) -> None:
        dirty = self.fleet.take_dirty_ids()
        for start in range(0, len(dirty), CHECKPOINT_CHUNK):
            rows = self.fleet.rows_of(dirty[start:start + CHECKPOINT_CHUNK])
            if not rows:
                continue
            try:  # one transaction a chunk: the loop runs between them
                await self.db.write(functools.partial(store.checkpoint_devices, rows=rows))
            except StoreError:
                self.fleet.mark_dirty(dirty[start:])  # checkpointed at the next tick
                raise
        await self.update_gauges()

    async def update_gauges(self) -> None:
        counts = self.fleet.counts()
        for state, count in counts.items():
            self.metrics.devices.labels(state).set(count)
        await self._update_unsent_age()

    async def _update_unsent_age(self) -> None:
        """Age of each endpoint's oldest unsent frame: grows through an outage, 0 when caught up."""
        now_ms = int(time.time() * 1000)
        for forwarder in self.forwarders:
            age = 0.0
            if forwarder.cursor < self.pipeline.committed_upto:
                oldest = await self.db.read(
                    functools.partial(store.oldest_unsent_ms, after_id=forwarder.cursor))
                if oldest is not None:
                    age = max(0.0, (now_ms - oldest) / 1000)
            self.metrics.oldest_unsent_age.labels(forwarder.endpoint).set(age)
            self.unsent_age_s[forwarder.endpoint] = age
            history = self._sent_history.setdefault(
                forwarder.endpoint, deque(maxlen=int(60 / GAUGE_INTERVAL_S) + 1))
            history.append((time.monotonic(), forwarder.status.sent_samples))

    def send_rate(self, endpoint: str) -> float:
        """Samples per second an endpoint took over about the last minute."""
        history = self._sent_history.get(endpoint)
        if not history or len(history) < 2:
            return 0.0
        (t0, n0), (t1, n1) = history[0], history[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    # ------------------------------------------------------------------ stop
    def request_stop(self) -> None:
        self._stop_requested.set()

    async def wait(self) -> None:
        await self._stop_requested.wait()

    def _task(self, name: str) -> asyncio.Task[None] | None:
        return next((t for t in self._tasks if t.get_name() == name), None)

    async def shutdown(self) -> None:
        if not hasattr(self, "pipeline"):  # start() failed before anything ran
            await self.db.close()
            self.lock.release()
            return
        if self._server is not None and not self._server.started:  # the API never came up
            self._server.should_exit = True
        log.info("shutting down: stopping ingest")
        await self.ingest.stop()
        pipeline_task = self._task("pipeline")
        if pipeline_task is not None and not pipeline_task.done():
            await asyncio.wait([pipeline_task], timeout=30)  # commits what is in hand
        deadline = self.settings.shutdown_forward_deadline_s
        forward_tasks = [t for t in self._tasks if t.get_name().startswith("forward:")]
        for forwarder in self.forwarders:
            forwarder.begin_drain()
        if forward_tasks:
            _done, pending = await asyncio.wait(forward_tasks, timeout=deadline)
            for forwarder in self.forwarders:
                forwarder.stop_retrying()
            if pending:
                log.warning("last forward did not finish in %.1f s; the rest stays buffered",
                            deadline)
        self.events.close()  # server-sent event streams end, so uvicorn can stop
        if self._server is not None:
            self._server.should_exit = True
        api_task = self._task("api")
        for task in self._tasks:
            if not task.done() and task is not api_task:
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await self._write_events()
            await self.checkpoint()
        except Exception as exc:  # the fleet checkpoint is advisory; the buffer is safe
            log.warning("final fleet checkpoint failed: %s", exc)
        for forwarder in self.forwarders:
            await forwarder.aclose()
        await self.db.close()
        self.lock.release()
        log.info("stopped")


def tune_gc() -> None:
    """Make the cyclic garbage collector cheap for this workload.

    The data path allocates millions of short-lived, acyclic objects (frames, tuples, bytes),
    and each allocation burst triggered collections that walked every long-lived object
    (caches, ledger, fleet, imported modules): bench/RESULTS.md measured 30% of the gateway's
    CPU in gc. Freezing what exists after start-up and collecting less often removes most of
    that; the few cycles the code creates (asyncio exceptions) are still collected.
    """
    gc.collect()
    gc.freeze()
    # Measured (bench/throughput.py, 10,000 devices x 30 frames): (50k, 20) spent 19% of the
    # CPU in gen0/gen1 collections; (200k, 100) cut the gateway's CPU per frame by a quarter
    # with the same peak RSS.
    gc.set_threshold(200_000, 100, 20)


async def serve(settings: Settings) -> int:
    """Run the gateway until SIGTERM/SIGINT; return the process exit code."""
    gateway = Gateway(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, gateway.request_stop)
    try:
        await gateway.start()
        tune_gc()
        await gateway.wait()
    finally:
        await gateway.shutdown()
    return 1 if gateway.failed else 0
