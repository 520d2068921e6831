"""The ingest pipeline: decode -> dedup -> store, one group commit at a time, then ack.

    messages (Inbox) -> plan     no I/O, state untouched (gateway.pipeline.plan): decode, dedup
                                 against a ledger overlay, resolve aliases, hold frames whose
                                 birth is unknown, quarantine bad ones
                     -> commit   one SQLite transaction (frames + ledger + births + held +
                                 quarantine + drop counters), under the buffer's commit lock
                     -> apply    fold the plan into the pipeline's state, tell the fleet and the
                                 buffer (entries cached, readers woken), PUBACK in arrival order

Nothing is acknowledged before its transaction has committed; a commit that fails is retried with
the same plan while the messages stay unacked (the broker keeps them).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Protocol, cast

from tenacity import AsyncRetrying, retry_if_exception

from device_protocol import Command as DeviceCommand
from device_protocol import Limits, TelemetryRows, cmd_topic, encode_command
from gateway.backoff import backoff_s  # one backoff rule for every retry
from gateway.buffer import markers, store
from gateway.buffer.buffer import Buffer
from gateway.errors import StoreError
from gateway.fleet.state import FleetState
from gateway.ingest.inbox import InboundMessage, Inbox
from gateway.metrics import GatewayMetrics
from gateway.pipeline.births import BirthRegistry
from gateway.pipeline.dedup import Ledger, LedgerKey
from gateway.pipeline.frame_compiler import FrameCompiler
from gateway.pipeline.plan import BatchPlan, Planner
from gateway.pipeline.state import HeldFrame, PipelineState, held_index
from gateway.settings import StoreConfig

log = logging.getLogger(__name__)

SLOW_COMMIT_S = 0.5  # a group commit slower than this is logged
# Silent boots closed in one transaction (~21 markers each at 20 series: ~5,000 entries).
# Live devices' commits wait for at most one such transaction: bench/fleet_jobs.py, 20,000
# devices gone dark on the loaded 2-core box, worst live commit 383 ms at 500 boots, 229 ms
# at 200, the same CPU (4.2-4.4 s against 25-30 s one boot a transaction).
CLOSE_BOOTS_CHUNK = 250


class Acknowledger(Protocol):
    """What the pipeline needs of the MQTT side (the real one is gateway.ingest.mqtt.MqttIngest)."""

    def ack(self, messages: list[InboundMessage]) -> int: ...
    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None: ...


class Pipeline:
    def __init__(self, *, buffer: Buffer, mqtt: Acknowledger, config: StoreConfig,
                 limits: Limits, topic_prefix: str, compiler: FrameCompiler,
                 fleet: FleetState, metrics: GatewayMetrics, state: PipelineState,
                 on_fleet_change: Callable[[], None] = lambda: None) -> None:
        self._buffer = buffer
        self._mqtt = mqtt
        self._config = config
        self._prefix = topic_prefix
        self._compiler = compiler
        self._state = state
        self._fleet = fleet
        self._metrics = metrics
        self._on_fleet_change = on_fleet_change
        self._planner = Planner(state=state, buffer=buffer, limits=limits,
                                topic_prefix=topic_prefix, compiler=compiler)
        self.last_commit_ok = True
        metrics.frames_held.set(state.held_count())

    @property
    def ledger(self) -> Ledger:
        return self._state.ledger

    @property
    def births(self) -> BirthRegistry:
        return self._state.births

    @property
    def held(self) -> dict[LedgerKey, list[HeldFrame]]:
        return self._state.held

    # ------------------------------------------------------------------ commit and apply
    def plan(self, messages: Sequence[InboundMessage], now_ms: int) -> BatchPlan:
        return self._planner.plan(messages, now_ms)

    async def handle(self, messages: list[InboundMessage]) -> None:
        await self._buffer.pace()
        async with self._buffer.commit_lock:
            now_ms = int(time.time() * 1000)
            plan = self._planner.plan(messages, now_ms)
            await self._make_room(plan)
            await self._commit(plan, len(messages))
            self._apply(plan)
            self._mqtt.ack(messages)

    async def _commit(self, plan: BatchPlan, messages: int) -> None:
        started = time.perf_counter()
        async for attempt in AsyncRetrying(
                retry=retry_if_exception(lambda e: isinstance(e, StoreError)),
                wait=lambda state: backoff_s(state.attempt_number, 0.05, 5.0),  # ~0.05 .. 5 s
                before_sleep=self._log_commit_retry, reraise=True):
            with attempt:
                closed = await self._buffer.db.write(lambda conn: self._write(conn, plan))
        self.last_commit_ok = True
        if closed:
            self._take_closed(plan, closed)
        took = time.perf_counter() - started
        self._metrics.commit_seconds.observe(took)
        if took > SLOW_COMMIT_S:  # every PUBACK of the batch waited this long
            log.warning("group commit of %d messages took %.2f s (disk stall? see "
                        "fleetgate_commit_duration_seconds)", messages, took)
        if messages:
            self._metrics.commit_frames.observe(messages)

    @staticmethod
    def _write(conn: sqlite3.Connection, plan: BatchPlan) -> list[tuple[int, list[bytes]]]:
        store.write_batch(conn, plan.write)
        if not plan.closes:
            return []
        return markers.write_closes(conn, plan.closes, plan.now_ms, plan.reopened)

    def _take_closed(self, plan: BatchPlan, closed: list[tuple[int, list[bytes]]]) -> None:
        """The stale-marker frames join the batch's entries, in frame id order."""
        plan.entries.extend(closed)
        plan.entries.sort(key=lambda frame: frame[0])
        markers = 0
        for _, entries in closed:
            plan.added_bytes += sum(map(len, entries))
            markers += len(entries)
        plan.stored_extra += len(closed)
        self._metrics.stale_markers.inc(markers)

    async def _make_room(self, plan: BatchPlan) -> None:
        await self._buffer.make_room(plan.added_bytes, self._state.held_bytes)

    def _log_commit_retry(self, retry_state: object) -> None:
        self.last_commit_ok = False
        self._metrics.commit_errors.inc()
        outcome = getattr(retry_state, "outcome", None)
        log.error("group commit failed, retrying (messages stay unacked): %s",
                  outcome.exception() if outcome else "?")

    def _apply(self, plan: BatchPlan) -> None:
        assert plan.overlay is not None
        state = self._state
        state.ledger.apply(plan.overlay)
        self._note_closed(plan)
        for device_id, birth, ahead_ms, received_ms in plan.births:
            state.births.put(device_id, birth, ahead_ms, received_ms)
        for key in plan.released:
            state.held.pop(key, None)
            state.held_seqs.pop(key, None)
        for key, frames in plan.held.items():
            state.held.setdefault(key, []).extend(frames)
            index = state.held_seqs.setdefault(key, {})
            for seq, _, payload in frames:
                index.setdefault(seq, set()).add(payload)
        self._tell_fleet(plan)
        for device_id in plan.rebirths:
            self._mqtt.publish(cmd_topic(self._prefix, device_id),
                               encode_command(DeviceCommand(rebirth=True)), qos=1)
            self._metrics.rebirths_requested.inc()
        m = self._metrics
        for frame_kind, count in plan.kinds.items():
            kind = frame_kind.value
            m.frames_received.labels(kind).inc(count)
        m.frames_stored.inc(len(plan.write.frames))
        m.frames_duplicate.inc(plan.duplicates)
        if plan.labels_dropped:
            m.labels_dropped.labels("empty_value").inc(plan.labels_dropped)
        for reason, count in plan.invalid.items():
            m.frames_invalid.labels(reason).inc(count)
        if plan.invalid:  # one line per group commit: a flood of bad frames is no log flood
            log.warning("quarantined %d frame(s) %s, e.g. %s", sum(plan.invalid.values()),
                        dict(plan.invalid), plan.first_invalid)
        m.frames_held.set(state.held_count())
        self._buffer.committed(plan.entries, len(plan.write.frames) + plan.stored_extra,
                               plan.added_bytes, plan.last_frame_id)

    def _note_closed(self, plan: BatchPlan) -> None:
        closed = self._state.closed_boots
        assert plan.overlay is not None
        if closed:
            closed.difference_update(plan.overlay.changed)  # boots that stored frames again
        closed.update(key for key in ((close.device_id, close.boot) for close in plan.closes)
                      if key not in plan.reopened)

    def forget_closed(self, keys: Sequence[LedgerKey]) -> None:
        """Boots pruned from the dedup state (their closed_boots rows went with them)."""
        self._state.closed_boots.difference_update(keys)

    def _tell_fleet(self, plan: BatchPlan) -> None:
        fleet = self._fleet
        observe_telemetry = fleet.observe_telemetry
        for kind, device_id, item, ms in plan.fleet:
            if kind == "telemetry":
                rows, frame_bytes = cast(tuple[TelemetryRows, bytes], item)
                observe_telemetry(device_id, rows, ms, frame_bytes)
            elif kind == "birth":
                fleet.observe_birth(device_id, item, ms)  # type: ignore[arg-type]
            else:
                fleet.observe_death(device_id, item, ms)  # type: ignore[arg-type]
        if plan.duplicate_keys:
            fleet.observe_duplicates(plan.duplicate_keys)
        for device_id, count in plan.invalid_devices.items():
            fleet.observe_quarantined(device_id, count)
        assert plan.overlay is not None
        for key, ranges in plan.overlay.changed.items():
            if len(ranges) > 1:
                fleet.observe_gaps(key[0])
        if plan.fleet:
            self._on_fleet_change()

    async def commit_entries(self, device_id: str, entries: Sequence[bytes]) -> int:
        """Commit entries the gateway made itself (stale markers, fleet metrics) as one frame of
        the buffer, so they reach every endpoint through outages like device frames do."""
        buffer = self._buffer
        async with buffer.commit_lock:
            now_ms = int(time.time() * 1000)
            frame_id = buffer.reserve_id()
            payload = b"".join(entries)
            write = store.BatchWrite(frames=[(frame_id, store.KIND_ENTRIES, device_id, 0, None,
                                              now_ms, payload)])
            plan = BatchPlan(write=write, overlay=self._state.ledger.overlay(),
                             entries=[(frame_id, list(entries))], added_bytes=len(payload),
                             last_frame_id=frame_id)
            await self._make_room(plan)
            await self._commit(plan, 0)
            # Not _apply: these are no device's frames (fleetgate_frames_stored counts those).
            buffer.committed(plan.entries, 1, plan.added_bytes, frame_id)
            return frame_id

    async def close_boot(self, device_id: str, boot: int,
                         still_closed: Callable[[], bool]) -> int:
        """Stale markers for every series of a boot gone silent (an offline timeout), unless
        still_closed() says the device came back meanwhile. Returns the markers queued."""
        return await self.close_boots([(device_id, boot, still_closed)])

    async def close_boots(self, boots: Sequence[tuple[str, int, Callable[[], bool]]]) -> int:
        """close_boot for many boots (a fleet gone dark): CLOSE_BOOTS_CHUNK boots a
        transaction, the commit lock given up between chunks so the group commits of the
        devices still alive go in between (asyncio.Lock hands it to the first waiter), and only
        one chunk's markers built at a time. Returns the markers queued."""
        queued = 0
        for start in range(0, len(boots), CLOSE_BOOTS_CHUNK):
            queued += await self._close_chunk(boots[start:start + CLOSE_BOOTS_CHUNK])
            await asyncio.sleep(0)  # a waiter woken by the release runs before the next chunk
        return queued

    async def _close_chunk(self, boots: Sequence[tuple[str, int, Callable[[], bool]]]) -> int:
        async with self._buffer.commit_lock:
            # still_closed() is asked under the lock: no frame of the device commits meanwhile
            plan = BatchPlan(overlay=self._state.ledger.overlay(), now_ms=int(time.time() * 1000))
            # Planned one boot at a time on a scratch plan (same overlay), whose close is then
            # moved over: the planner looks for the boot among the plan's closes already (a
            # linear scan: 500 boots made that 125,000 steps a chunk, half the loop's time).
            # The boots are told apart here instead.
            scratch = BatchPlan(overlay=plan.overlay, now_ms=plan.now_ms)
            current, seen = self._state.births.current, set()
            for device_id, boot, still_closed in boots:
                if (device_id, boot) not in seen and still_closed():
                    seen.add((device_id, boot))
                    self._planner.close_boot(scratch, device_id, boot, plan.now_ms,
                                             current(device_id))
                    plan.closes += scratch.closes
                    plan.closing |= scratch.closing
                    scratch.closes.clear()
            if not plan.closes:
                return 0
            plan.last_frame_id = plan.closes[-1].frame_id
            if self._buffer.full_policy == "drop_oldest":
                await self._make_room(plan)
            # Under block, a boot's markers (small) never wait for room: the lifecycle loop
            # must not stall behind a full buffer, and ending a boot is part of its frames.
            await self._commit(plan, 0)
            self._note_closed(plan)
            self._buffer.committed(plan.entries, plan.stored_extra, plan.added_bytes,
                                   plan.last_frame_id)
            return sum(len(entries) for _, entries in plan.entries)

    async def run(self, inbox: Inbox) -> None:
        """Take group after group from the inbox until it is closed and empty."""
        config = self._config
        while True:
            batch = await inbox.get_batch(config.commit_max_frames, config.commit_max_delay_s)
            if not batch:
                return
            await self.handle(batch)

    def drop_held_before(self, before_ms: int) -> int:
        """Forget held frames received before before_ms (already deleted from SQLite)."""
        state = self._state
        dropped = dropped_bytes = 0
        for key in list(state.held):
            kept = [h for h in state.held[key] if h[1] >= before_ms]
            for _seq, received_ms, payload in state.held[key]:
                if received_ms < before_ms:
                    dropped_bytes += len(payload)
                    dropped += 1
            if kept:
                state.held[key] = kept
                state.held_seqs[key] = held_index(kept)
            else:
                del state.held[key]
                state.held_seqs.pop(key, None)
        self._buffer.freed(0, dropped_bytes)
        self._metrics.frames_held.set(state.held_count())
        return dropped
