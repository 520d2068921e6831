"""Wiring and lifecycle: the one place where the stages meet.

    MqttIngest -> Inbox -> Pipeline (decode, dedup, store, ack) -> EntryCache/SQLite
                                                                -> Forwarder per endpoint
    FleetState and the API beside them, on the same event loop. The background jobs
    (gateway/jobs, one task each, built here) move devices to late/offline, write their events,
    stream them (EventHub) and send stale markers; write the fleet as metrics through the
    buffer; checkpoint the fleet; prune past dedup state and old events; update the gauges.

Shutdown order (SIGTERM/SIGINT): stop ingest (unacked messages stay at the broker), commit what
is in hand, try a last forward under a deadline, checkpoint the fleet, close the database,
release the data-dir lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import ssl
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn

from device_protocol import Limits
from gateway.buffer import recovery, store
from gateway.buffer.buffer import Buffer
from gateway.buffer.datadir_lock import DataDirLock
from gateway.buffer.db import Database
from gateway.buffer.entry_cache import EntryCache
from gateway.credentials import CredentialFile
from gateway.errors import ConfigError
from gateway.fleet import completeness
from gateway.fleet.events import EventHub
from gateway.fleet.series import FleetCollector
from gateway.fleet.state import DeviceRecord, FleetState
from gateway.forward.client import HttpRemoteWriteClient
from gateway.forward.forwarder import Forwarder, Resume
from gateway.ingest.inbox import Inbox
from gateway.ingest.mqtt import MqttIngest
from gateway.jobs.checkpoint import CheckpointJob, run_checkpoint_and_gauges
from gateway.jobs.fleet_metrics import FleetMetricsJob
from gateway.jobs.gauges import GaugesJob
from gateway.jobs.lifecycle import LIFECYCLE_TICK_S, LifecycleJob
from gateway.jobs.maintenance import MAINTENANCE_INTERVAL_S, PruneDedupStateJob, PruneEventsJob
from gateway.jobs.runner import Runner, wall_ms
from gateway.metrics import GatewayMetrics
from gateway.pipeline.births import BirthRegistry
from gateway.pipeline.frame_compiler import FrameCompiler
from gateway.pipeline.readback import stored_frame_decoder
from gateway.pipeline.series_budget import SeriesBudget
from gateway.pipeline.stage import Pipeline
from gateway.pipeline.state import restore_state
from gateway.remote_write.series import SeriesEncoder
from gateway.settings import Settings, parse_listen

log = logging.getLogger(__name__)


class _EmbeddedServer(uvicorn.Server):
    """uvicorn inside our loop: the gateway, not uvicorn, owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass(frozen=True, slots=True)
class Jobs:
    """The gateway's background jobs (gateway/jobs), built in Gateway.start(); a test calls
    their tick(now_ms) itself."""

    runner: Runner
    lifecycle: LifecycleJob
    fleet_metrics: FleetMetricsJob
    gauges: GaugesJob
    checkpoint: CheckpointJob
    prune_dedup_state: PruneDedupStateJob
    prune_events: PruneEventsJob


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
        self._tasks: list[asyncio.Task[None]] = []
        self._stop_requested = asyncio.Event()
        self._server: _EmbeddedServer | None = None
        self.ingest: MqttIngest
        self.pipeline: Pipeline
        self.buffer: Buffer
        self.inbox: Inbox
        self.jobs: Jobs

    # ------------------------------------------------------------------ start
    async def start(self) -> None:
        s = self.settings
        self.lock.acquire()  # before the database: recovery may move files aside
        await self.db.open()
        state = await self.db.read(store.load_state)
        self._restore(state)
        loop = asyncio.get_running_loop()
        password = (CredentialFile(s.mqtt_password_file, "mqtt_password_file").read()
                    if s.mqtt_password_file else None)
        mqtt_config = s.mqtt_config(password)
        self.inbox = Inbox(loop, mqtt_config.max_in_hand)
        self.ingest = MqttIngest(mqtt_config, self.inbox,
                                 on_connection_change=self.metrics.mqtt_connected.set)
        forward, store_config = s.forward_config(), s.store_config()
        self.compiler = compiler = FrameCompiler(SeriesEncoder(forward.external_labels),
                                                 budget=self.series_budget)
        self.buffer = Buffer(
            self.db, self.metrics, next_frame_id=state.next_frame_id, frames=state.buffer_frames,
            size=state.buffer_bytes, endpoints=forward.endpoints,
            max_bytes=store_config.max_buffer_bytes, full_policy=store_config.full_policy,
            cache=self.cache, decode=stored_frame_decoder(compiler, self.births))
        self.pipeline = Pipeline(
            buffer=self.buffer, mqtt=self.ingest, config=store_config,
            limits=Limits(max_payload_bytes=s.max_frame_bytes,
                          max_samples=s.max_samples_per_frame,
                          max_future_skew_ms=int(s.max_clock_skew_s * 1000)),
            topic_prefix=s.topic_prefix, compiler=compiler, fleet=self.fleet,
            metrics=self.metrics, state=self.pipeline_state,
            on_fleet_change=self._on_fleet_change)
        for endpoint, target in zip(forward.endpoints, forward.targets, strict=True):
            self.forwarders.append(Forwarder(
                endpoint=endpoint,
                client=HttpRemoteWriteClient(target, timeout_s=forward.request_timeout_s),
                buffer=self.buffer, config=forward, metrics=self.metrics,
                resume=Resume.of(state, endpoint)))
        self.metrics.store_recoveries.inc(state.counters.get(recovery.COUNTER_RECOVERIES, 0))
        self.metrics.store_unreadable_frames.inc(
            state.counters.get(recovery.COUNTER_UNREADABLE_FRAMES, 0))
        self.jobs = self._build_jobs()
        await self._start_api()  # first: a taken port fails the start before MQTT is touched
        self.ingest.start()
        self._spawn(self.pipeline.run(self.inbox), "pipeline")
        for forwarder in self.forwarders:
            self._spawn(forwarder.run(), f"forward:{forwarder.endpoint}")
        self._spawn_jobs()
        if not s.api_tokens:
            log.warning("api_tokens is empty: the operator API is open to anyone who can reach "
                        "%s (set FLEETGATE_API_TOKENS=token:read,token:admin)", s.api_listen)
        log.info("fleetgate %s started: mqtt %s, %d endpoint(s), buffer %d frames, db %s",
                 s.gateway_id, s.mqtt_url, len(self.forwarders), state.buffer_frames, self.db.path)

    def _restore(self, state: store.StoredState) -> None:
        restored = restore_state(state, self.settings.ledger_max_ranges,
                                 clock_tolerance_ms=int(self.settings.max_clock_skew_s * 1000))
        self.pipeline_state = restored
        self.ledger, self.births = restored.ledger, restored.births
        self.fleet.load(state.devices, self.births.get)
        for device_id, _boot in self.ledger.keys_with_gaps():  # the fleet's set is memory only
            self.fleet.observe_gaps(device_id)
        for device_id, boot in self.ledger.keys():  # boots stored after the last checkpoint
            self.fleet.note_boot(device_id, boot)

    async def _start_api(self) -> None:
        from gateway.api.factory import (
            create_api,  # FastAPI import is heavy; keep it out of unit tests
        )
        from gateway.gateway_port import GatewayView

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
        cert, key = self._api_tls()
        config = uvicorn.Config(create_api(GatewayView(self)), log_level="warning", lifespan="off",
                                access_log=False, timeout_graceful_shutdown=2,
                                ssl_certfile=cert, ssl_keyfile=key)
        self._server = _EmbeddedServer(config)
        self._spawn(self._server.serve(sockets=[listener]), "api")
        while not self._server.started:  # uvicorn sets a flag, no event to await
            if self._server_task_failed():
                raise ConfigError(f"the API on {self.settings.api_listen} did not start")
            await asyncio.sleep(0.01)

    def _api_tls(self) -> tuple[str | None, str | None]:
        """uvicorn's HTTPS settings; a certificate or key that does not load fails the start
        here, with the setting's name, not as an exception in the API's task."""
        cert, key = self.settings.api_tls_cert_file, self.settings.api_tls_key_file
        if cert is None or key is None:
            return None, None
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"api_tls_cert_file {cert} / api_tls_key_file {key}: {exc}",
                              hint="a PEM certificate (chain) and its private key") from exc
        return str(cert), str(key)

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
    def _on_fleet_change(self) -> None:
        if self.fleet.has_events():
            self._fleet_changed.set()

    def missing_of(self, record: DeviceRecord) -> int:
        """Seqs missing in the device's known boots (0 at once for a device without gaps)."""
        if record.device_id not in self.fleet.incomplete:
            return 0
        return completeness.totals(record, self.pipeline.ledger)[1]

    # ------------------------------------------------------------------ jobs
    def _build_jobs(self) -> Jobs:
        s, db, fleet, metrics, pipeline = (self.settings, self.db, self.fleet, self.metrics,
                                           self.pipeline)
        gauges = GaugesJob(fleet, self.forwarders, db, lambda: self.buffer.committed_upto,
                           metrics)
        checkpoint = CheckpointJob(fleet, db, gauges)
        return Jobs(
            runner=Runner(metrics.background_errors),
            lifecycle=LifecycleJob(fleet, db, self.events, metrics,
                                   close_boot=None,
                                   close_boots=pipeline.close_boots if self.forwarders else None),
            fleet_metrics=FleetMetricsJob(fleet, self.compiler.encoder, self.missing_of,
                                          s.gateway_id, pipeline.commit_entries),
            gauges=gauges, checkpoint=checkpoint,
            prune_dedup_state=PruneDedupStateJob(db, checkpoint, self.ledger, self.births,
                                                 self.compiler, pipeline, metrics,
                                                 s.dedup_retention_days),
            prune_events=PruneEventsJob(db, s.device_event_retention_days))

    def _spawn_jobs(self) -> None:
        jobs, run = self.jobs, self.jobs.runner
        self._spawn(run_checkpoint_and_gauges(run, jobs.checkpoint, jobs.gauges),
                    "fleet-checkpoint")
        self._spawn(run.when_signalled("lifecycle", jobs.lifecycle, self._fleet_changed,
                                       LIFECYCLE_TICK_S), "lifecycle")
        interval_s = self.settings.fleet_metrics_interval_s
        if interval_s and self.forwarders:
            self._spawn(run.every(interval_s, ("fleet-metrics", jobs.fleet_metrics)),
                        "fleet-metrics")
        self._spawn(run.every(MAINTENANCE_INTERVAL_S, ("prune-dedup-state", jobs.prune_dedup_state),
                              ("prune-events", jobs.prune_events), at_start=True), "maintenance")

    @property
    def unsent_age_s(self) -> dict[str, float]:
        """Each endpoint's oldest unsent age as of the last gauges tick (the API shows it)."""
        return self.jobs.gauges.unsent_age_s

    def send_rate(self, endpoint: str) -> float:
        """Samples per second the endpoint took over about the last minute (the API shows it)."""
        return self.jobs.gauges.send_rate(endpoint)

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
        # A paused endpoint (a configuration error) takes nothing: stop it at once instead of
        # waiting the deadline for it; its frames stay buffered for the next start.
        paused = {f"forward:{f.endpoint}" for f in self.forwarders if f.status.paused}
        forward_tasks = [t for t in self._tasks
                         if t.get_name().startswith("forward:") and t.get_name() not in paused]
        for forwarder in self.forwarders:
            if forwarder.status.paused:
                forwarder.stop_retrying()
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
            await self.jobs.lifecycle.write_events()
            await self.jobs.checkpoint.tick(wall_ms())
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
