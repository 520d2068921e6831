"""The ingest pipeline: decode -> dedup -> store, one group commit at a time, then ack.

    messages (Inbox) -> plan()   pure: decode, dedup against a ledger overlay, resolve aliases,
                                 hold frames whose birth is unknown, quarantine bad ones
                     -> commit   one SQLite transaction (frames + ledger + births + held +
                                 quarantine + drop counters)
                     -> apply    fold the overlay into memory, cache encoded entries, update the
                                 fleet, PUBACK in arrival order, wake the forwarders

Nothing is acknowledged before its transaction has committed; a commit that fails is retried with
the same plan while the messages stay unacked (the broker keeps them).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from tenacity import AsyncRetrying, retry_if_exception

from device_protocol import (
    DEFAULT_LIMITS,
    Birth,
    FrameKind,
    Limits,
    ProtocolError,
    SchemaError,
    TelemetryRows,
    TimestampOutOfRange,
    cmd_topic,
    decode_birth,
    decode_death,
    decode_telemetry_rows,
    encode_command,
    parse_topic,
)
from device_protocol import Command as DeviceCommand
from gateway.backoff import backoff_s  # one backoff rule for every retry
from gateway.buffer import store
from gateway.buffer.db import Database
from gateway.buffer.entry_cache import EntryCache
from gateway.errors import StoreError
from gateway.fleet.state import FleetState
from gateway.ingest.mqtt import InboundMessage, Inbox
from gateway.metrics import GatewayMetrics
from gateway.pipeline.births import (
    BirthRegistry,
    BootOrder,
    after,
    clock_ahead_ms,
    shifted,
    supersedes,
)
from gateway.pipeline.dedup import Ledger, LedgerKey, LedgerOverlay, decode_ranges, encode_ranges
from gateway.pipeline.frame_compiler import FrameCompiler
from gateway.remote_write.wire import LabelValidationError
from gateway.settings import StoreConfig

log = logging.getLogger(__name__)

SLOW_COMMIT_S = 0.5  # a group commit slower than this is logged
REBIRTH_REQUEST_INTERVAL_MS = 30_000  # don't nag a device more often than this
TOPIC_CACHE_SIZE = 300_000  # three topics a device: a 100k-device fleet stays parsed
HeldFrame = tuple[int, int, bytes]  # (seq, received_ms, payload)


HeldIndex = dict[int, set[bytes]]  # seq -> the payloads held with it: O(1) dedup per frame


def _held_index(frames: Sequence[HeldFrame]) -> HeldIndex:
    index: HeldIndex = {}
    for seq, _, payload in frames:
        index.setdefault(seq, set()).add(payload)
    return index


class Acknowledger(Protocol):
    """What the pipeline needs of the MQTT side (the real one is gateway.ingest.mqtt.MqttIngest)."""

    def ack(self, messages: list[InboundMessage]) -> int: ...
    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None: ...


@dataclass(slots=True)
class BatchPlan:
    write: store.BatchWrite = field(default_factory=store.BatchWrite)
    overlay: LedgerOverlay | None = None
    # (device, birth, clock ahead ms, received ms)
    births: list[tuple[str, Birth, int, int]] = field(default_factory=list)
    current: dict[str, tuple[int, BootOrder]] = field(default_factory=dict)  # boots taking over
    birth_index: dict[tuple[str, int], tuple[Birth, int]] = field(default_factory=dict)
    held: dict[LedgerKey, list[HeldFrame]] = field(default_factory=dict)
    held_seqs: dict[LedgerKey, HeldIndex] = field(default_factory=dict)
    released: list[LedgerKey] = field(default_factory=list)
    entries: list[tuple[int, Sequence[bytes]]] = field(default_factory=list)
    # What the fleet is told, in arrival order (a death then a birth is not a birth then a
    # death): ("birth", device, Birth, ms) | ("telemetry", device, TelemetryRows, received_ms)
    # | ("death", device, boot, ms)
    fleet: list[tuple[str, str, object, int]] = field(default_factory=list)
    rebirths: list[str] = field(default_factory=list)
    duplicates: int = 0
    duplicate_keys: list[LedgerKey] = field(default_factory=list)
    invalid: dict[str, int] = field(default_factory=dict)
    invalid_devices: dict[str, int] = field(default_factory=dict)  # quarantined per device
    first_invalid: str | None = None
    kinds: dict[FrameKind, int] = field(default_factory=dict)
    added_bytes: int = 0
    last_frame_id: int = 0
    labels_dropped: int = 0  # labels with an empty value left out of the frames stored
    closes: list[store.BootClose] = field(default_factory=list)  # boots whose series end here
    stored_extra: int = 0  # frames of the gateway's own (stale markers) stored with the batch
    reopened: set[LedgerKey] = field(default_factory=set)  # closed, then stored frames again
    now_ms: int = 0


@dataclass(slots=True)
class RestoredState:
    ledger: Ledger
    births: BirthRegistry
    held: dict[LedgerKey, list[HeldFrame]]
    closed_boots: list[LedgerKey]


def restore_state(state: store.StoredState, ledger_max_ranges: int,
                  clock_tolerance_ms: int = DEFAULT_LIMITS.max_future_skew_ms) -> RestoredState:
    """The pipeline's memory rebuilt from what SQLite holds, at start-up."""
    ledger = Ledger(ledger_max_ranges)
    for device_id, boot, ranges, newest_ms in state.ledger:
        ledger.load((device_id, boot), decode_ranges(ranges), newest_ms)
    births = BirthRegistry()
    for device_id, boot, received_ms, payload, ahead_ms in state.births:
        try:
            birth = decode_birth(payload)
            if ahead_ms is None:  # a row from before the measurement was kept
                ahead_ms = clock_ahead_ms(birth.time_ms, received_ms, clock_tolerance_ms)
            births.put(device_id, birth, ahead_ms, received_ms)
        except ProtocolError as exc:  # a damaged row must not stop the gateway
            log.error("stored birth of %s boot %d unreadable: %s", device_id, boot, exc)
    held: dict[LedgerKey, list[HeldFrame]] = {}
    for device_id, boot, seq, received_ms, payload in state.held:
        held.setdefault((device_id, boot), []).append((seq, received_ms, payload))
        # Gateways before the one-rule seq fix marked held seqs seen: a held frame is not yet
        # committed for forwarding, so its seq must be free for its own release.
        seen = ledger.get((device_id, boot))
        if seen is not None:
            seen.discard(seq)
    return RestoredState(ledger, births, held, [tuple(key) for key in state.closed_boots])  # type: ignore[misc]


def _as_protocol_error(exc: Exception, device_id: str | None) -> ProtocolError:
    """Per-frame failures become a quarantine reason. Anything but a ProtocolError here is a
    bug: it must cost one frame, not the gateway (a crash would be redelivered the same frame
    after restart and crash-loop), so it is logged with its traceback and quarantined."""
    if isinstance(exc, ProtocolError):
        return exc
    if isinstance(exc, LabelValidationError):
        return SchemaError("invalid series", str(exc))
    log.error("internal error on a frame from %s", device_id, exc_info=exc)
    return SchemaError("internal error", f"{type(exc).__name__}: {exc}")


class Pipeline:
    def __init__(self, *, db: Database, mqtt: Acknowledger, config: StoreConfig, limits: Limits,
                 topic_prefix: str, compiler: FrameCompiler, births: BirthRegistry, ledger: Ledger,
                 fleet: FleetState, cache: EntryCache, metrics: GatewayMetrics,
                 next_frame_id: int, buffer_bytes: int, buffer_frames: int,
                 held: dict[LedgerKey, list[HeldFrame]] | None = None,
                 on_committed: Callable[[int], None] = lambda frame_id: None,
                 forwarders_keeping_up: Callable[[], bool] = lambda: False,
                 on_fleet_change: Callable[[], None] = lambda: None,
                 max_future_skew_ms: int = 300_000,
                 closed_boots: Sequence[LedgerKey] = ()) -> None:
        self._db = db
        self._mqtt = mqtt
        self._config = config
        self._limits = limits
        self._prefix = topic_prefix
        self._compiler = compiler
        self._encoder = compiler.encoder
        self.births = births
        self.ledger = ledger
        self._fleet = fleet
        self._cache = cache
        self._metrics = metrics
        self._next_frame_id = next_frame_id
        self.committed_upto = next_frame_id - 1
        self.buffer_bytes = buffer_bytes
        self.buffer_frames = buffer_frames
        self.held: dict[LedgerKey, list[HeldFrame]] = held or {}
        # (seq, payload) of the held frames: a copy is held again only if its bytes differ
        self._held_seqs = {key: _held_index(frames) for key, frames in self.held.items()}
        # Boots whose stale markers are queued and that stored nothing since: a second close
        # (a death, then the next boot's birth; a Will redelivered after a restart) would send
        # them again. Kept in SQLite too (closed_boots), written with the markers.
        self._closed_boots: set[LedgerKey] = set(closed_boots or ())
        self._on_committed = on_committed
        self._forwarders_keeping_up = forwarders_keeping_up
        self._on_fleet_change = on_fleet_change
        # One plan-commit-apply at a time: frame ids are handed out in commit order.
        self._commit_lock = asyncio.Lock()
        self._rebirth_sent: dict[str, int] = {}
        self._topics: dict[str, tuple[str, FrameKind]] = {}  # valid topics, parsed once
        self._progress = asyncio.Event()
        self.last_commit_ok = True
        metrics.frames_held.set(sum(len(v) for v in self.held.values()))

    # ------------------------------------------------------------------ planning (pure)
    def plan(self, messages: Sequence[InboundMessage], now_ms: int) -> BatchPlan:
        plan = BatchPlan(overlay=self.ledger.overlay(), now_ms=now_ms)
        topics = self._topics
        for message in messages:
            parsed = topics.get(message.topic)
            if parsed is None:
                try:
                    parsed = parse_topic(message.topic, self._prefix)
                except ProtocolError as exc:
                    self._quarantine(plan, message, None, exc)
                    continue
                if len(topics) >= TOPIC_CACHE_SIZE:
                    topics.clear()
                topics[message.topic] = parsed
            device_id, kind = parsed
            plan.kinds[kind] = plan.kinds.get(kind, 0) + 1  # (Enum.value is slow per message)
            try:
                if kind is FrameKind.TELEMETRY:
                    self._plan_telemetry(plan, message, device_id, now_ms)
                elif kind is FrameKind.BIRTH:
                    self._plan_birth(plan, message, device_id, now_ms)
                elif kind is FrameKind.DEATH:
                    self._plan_death(plan, message, device_id)
            except Exception as exc:
                self._quarantine(plan, message, device_id, _as_protocol_error(exc, device_id))
        assert plan.overlay is not None
        overlay = plan.overlay
        for key, ranges in overlay.changed.items():
            plan.write.ledger.append((key[0], key[1], encode_ranges(ranges), now_ms,
                                      overlay.newest(key)))
        closed = self._closed_boots
        if closed:  # closed boots that stored frames again (or closed again) are open again
            plan.write.reopened = [key for key in overlay.changed if key in closed]
        if self._compiler.learned:  # series first seen in a boot: kept for its stale markers
            plan.write.boot_series, self._compiler.learned = self._compiler.learned, []
        plan.last_frame_id = self._next_frame_id - 1
        return plan

    def _plan_telemetry(self, plan: BatchPlan, message: InboundMessage, device_id: str,
                        now_ms: int) -> None:
        try:
            raw = decode_telemetry_rows(message.payload, limits=self._limits, now_ms=now_ms)
        except TimestampOutOfRange as exc:
            raw = self._decode_clock_ahead(plan, device_id, message.payload, now_ms, exc)
        key = (device_id, raw.boot)
        assert plan.overlay is not None
        # Only a check here: the seq is marked seen by _add_frame, once the frame's samples
        # are compiled for forwarding. A frame quarantined at any later stage leaves it unseen.
        if plan.overlay.seen(key, raw.seq):
            self._count_duplicate(plan, key)
            return
        birth, ahead_ms = self._birth_for(plan, device_id, raw.boot)
        if birth is None:
            if self._is_held(plan, key, raw.seq, message.payload):  # dedup of held frames
                self._count_duplicate(plan, key)
                return
            held = (raw.seq, message.received_ms, message.payload)
            plan.held.setdefault(key, []).append(held)
            plan.held_seqs.setdefault(key, {}).setdefault(raw.seq, set()).add(message.payload)
            plan.write.held.append((device_id, raw.boot, raw.seq, message.received_ms,
                                    message.payload))
            plan.added_bytes += len(message.payload)
            self._maybe_request_rebirth(plan, device_id, now_ms)
            return
        if ahead_ms:
            raw = shifted(raw, ahead_ms)
        # A known birth that lacks an alias is a firmware bug: the ProtocolError quarantines it.
        self._add_frame(plan, device_id, raw, birth, message.received_ms, message.payload)

    @staticmethod
    def _count_duplicate(plan: BatchPlan, key: LedgerKey) -> None:
        plan.duplicates += 1
        plan.duplicate_keys.append(key)

    def _is_held(self, plan: BatchPlan, key: LedgerKey, seq: int, payload: bytes) -> bool:
        """Is this very frame (seq and bytes) held already? A different frame with a held seq
        is held too: if the first one is refused at its release, this one may still be valid
        (the seq rule); it is counted as a duplicate now, and not again at the release."""
        copies = [index[seq] for index in (self._held_seqs.get(key), plan.held_seqs.get(key))
                  if index is not None and seq in index]
        if any(payload in held for held in copies):
            return True
        if copies:
            self._count_duplicate(plan, key)
        return False

    def _decode_clock_ahead(self, plan: BatchPlan, device_id: str, payload: bytes,
                            now_ms: int, exc: TimestampOutOfRange) -> TelemetryRows:
        """A frame "from the future": fine if its boot's clock is known to run ahead (it is
        then checked against the device's clock), or if its boot's birth has not come yet (it
        is held, and checked when the birth comes). Otherwise the error stands."""
        if exc.reason != "timestamp in the future":
            raise exc
        raw = decode_telemetry_rows(payload, limits=self._limits)
        birth, ahead_ms = self._birth_for(plan, device_id, raw.boot)
        if birth is None:
            return raw
        if not ahead_ms:
            raise exc
        return decode_telemetry_rows(payload, limits=self._limits, now_ms=now_ms + ahead_ms)

    def _add_frame(self, plan: BatchPlan, device_id: str, raw: TelemetryRows, birth: Birth,
                   received_ms: int, payload: bytes, released: bool = False) -> None:
        # May raise ProtocolError; drops (and counts) samples beyond the device's series budget.
        entries = self._compiler.entries(device_id, raw, birth, count_refused=True)
        key = (device_id, raw.boot)
        assert plan.overlay is not None
        if not plan.overlay.add(key, raw.seq):
            if not released:  # a released copy of a seq was counted when it arrived
                self._count_duplicate(plan, key)
            return
        if plan.closes and any((c.device_id, c.boot) == key for c in plan.closes):
            plan.reopened.add(key)  # a frame after its boot's close in this batch (a late one)
        later_ms = max((row[2] for row in raw.rows), default=0)  # samples may carry dt > 0
        plan.overlay.note_newest(key, raw.time_ms + max(later_ms, 0))
        plan.labels_dropped += raw.dropped_labels
        frame_id = self._next_frame_id
        self._next_frame_id += 1
        plan.write.frames.append((frame_id, store.KIND_TELEMETRY, device_id, raw.boot,
                                  raw.seq, received_ms, payload))
        plan.entries.append((frame_id, entries))
        if raw.boot != self._current_boot(plan, device_id):
            raw = TelemetryRows(raw.boot, raw.seq, raw.time_ms, raw.rows, True,  # a past boot's
                                raw.dropped_labels)
        plan.fleet.append(("telemetry", device_id, raw, received_ms))
        plan.added_bytes += len(payload)

    def _plan_birth(self, plan: BatchPlan, message: InboundMessage, device_id: str,
                    now_ms: int) -> None:
        # No future check: a clock that runs ahead is measured here and corrected for.
        birth = decode_birth(message.payload, limits=self._limits)
        known, known_ahead_ms = self._birth_for(plan, device_id, birth.boot)
        if known is not None:  # measured at the boot's first birth: frames stored rely on it
            ahead_ms = known_ahead_ms
        else:
            ahead_ms = clock_ahead_ms(birth.time_ms, message.received_ms,
                                      self._limits.max_future_skew_ms)
        if ahead_ms and known is None:
            log.warning("device %s boot %d: clock %.0f s ahead of the gateway's; its timestamps "
                        "are moved back by that much", device_id, birth.boot, ahead_ms / 1000)
        plan.births.append((device_id, birth, ahead_ms, message.received_ms))
        plan.birth_index[device_id, birth.boot] = (birth, ahead_ms)
        plan.write.births.append((device_id, birth.boot, message.received_ms, message.payload,
                                  ahead_ms))
        plan.labels_dropped += birth.dropped_labels
        previous = plan.current.get(device_id) or self.births.current(device_id)
        if self._takes_current(plan, device_id, birth, message.received_ms):
            if previous is not None and previous[0] != birth.boot:  # before the new boot's frames
                self._close_boot(plan, device_id, previous[0], message.received_ms, previous,
                                 next_boot_ms=birth.time_ms - ahead_ms)
            plan.fleet.append(("birth", device_id, birth, message.received_ms))
            frame_id = self._next_frame_id
            self._next_frame_id += 1
            plan.write.frames.append((frame_id, store.KIND_BIRTH, device_id, birth.boot, None,
                                      message.received_ms, message.payload))
            plan.entries.append(
                (frame_id, [self._encoder.info_entry(device_id, birth, message.received_ms)]))
            plan.added_bytes += len(message.payload)
        else:  # kept for its boot's frames; the device stays on its newer boot
            log.info("device %s: birth of past boot %d (t=%d) kept; the current boot stays",
                     device_id, birth.boot, birth.time_ms)
        key = (device_id, birth.boot)
        if key in plan.released:
            return  # a second birth of the boot in this batch: its held frames are released
        waiting = [*self.held.get(key, ()), *plan.held.pop(key, ())]
        if not waiting:
            return
        plan.released.append(key)
        plan.write.released.append(key)
        plan.write.held = [h for h in plan.write.held if (h[0], h[1]) != key]
        assert plan.overlay is not None
        for seq, received_ms, payload in sorted(waiting):
            plan.added_bytes -= len(payload)  # moves from held to frames
            if plan.overlay.seen(key, seq):
                continue  # another copy of the seq, released first: counted when it arrived
            try:
                # Checked against the device's clock when it was received.
                raw = decode_telemetry_rows(payload, limits=self._limits,
                                            now_ms=received_ms + ahead_ms)
                if ahead_ms:
                    raw = shifted(raw, ahead_ms)
                self._add_frame(plan, device_id, raw, birth, received_ms, payload,
                                released=True)
            except Exception as exc:  # one bad held frame must not lose the others
                held_message = InboundMessage(message.topic.rsplit("/", 1)[0] + "/telemetry",
                                              payload, 0, 0, 0, received_ms)
                self._quarantine(plan, held_message, device_id,
                                 _as_protocol_error(exc, device_id))
        log.info("device %s: birth for boot %d released %d held frames", device_id, birth.boot,
                 len(waiting))

    def _takes_current(self, plan: BatchPlan, device_id: str, birth: Birth,
                       received_ms: int) -> bool:
        """Does this birth make (or keep) its boot the device's current one? (The rule is in
        gateway.pipeline.births and docs/protocol.md: latest device clock t, then latest
        arrival.)"""
        current = plan.current.get(device_id) or self.births.current(device_id)
        if not supersedes(current, birth, received_ms):
            return False
        plan.current[device_id] = after(current, birth, received_ms)
        return True

    def _plan_death(self, plan: BatchPlan, message: InboundMessage, device_id: str) -> None:
        """A death of the current boot ends it (the fleet view's boot may be a checkpoint's,
        older than the births': a death of a past boot must not take the device offline)."""
        death = decode_death(message.payload, limits=self._limits)
        current = plan.current.get(device_id) or self.births.current(device_id)
        if current is not None and death.boot != current[0]:
            return  # an old connection's Will, redelivered or late: changes nothing
        plan.fleet.append(("death", device_id, death.boot, message.received_ms))
        if current is not None:
            self._close_boot(plan, device_id, death.boot, message.received_ms, current)

    def _close_boot(self, plan: BatchPlan, device_id: str, boot: int, close_ms: int,
                    current: tuple[int, BootOrder] | None,
                    next_boot_ms: int | None = None) -> None:
        """Stale markers for every series the boot wrote and for its fleet_device_info,
        committed in arrival order: after its own frames, before any frame of the boot that
        follows it (whose samples may carry the same series, later). close_ms: when the boot
        ended (the death's or the next birth's arrival; now, for a timeout); current: the
        device's current (boot, order) before this message; next_boot_ms: the next boot's
        clock at its birth (on the gateway's clock), for a reboot."""
        assert plan.overlay is not None
        key = (device_id, boot)
        if key in self._closed_boots and key not in plan.overlay.changed:
            return  # closed already (a death, then the next boot's birth) and silent since
        if any(close.device_id == device_id and close.boot == boot for close in plan.closes):
            return
        newest = plan.overlay.newest(key)
        if newest is not None and next_boot_ms is not None and newest + 1 > next_boot_ms:
            # The next boot's clock reads earlier than this boot's last sample (a clock stepped
            # back at boot): its samples of the same series would come after a marker that is
            # later than them, out of order. Its series are left to the query lookback.
            newest = None
        info, info_ms = None, 0
        birth = self._birth_for(plan, device_id, boot)[0]
        if birth is not None and current is not None and current[0] == boot:
            born_ms = current[1][1]  # its info sample's time: the birth's arrival
            info_ms = max(born_ms + 1, close_ms - 1)
            if info_ms < close_ms:  # else it would meet the next boot's info sample
                info = self._encoder.info_labels(device_id, birth)
        if newest is None and info is None:
            return  # nothing of that boot was ever sent
        frame_id = self._next_frame_id
        self._next_frame_id += 1
        plan.closes.append(store.BootClose(frame_id, device_id, boot,
                                           None if newest is None else newest + 1, info,
                                           info_ms))

    def _current_boot(self, plan: BatchPlan, device_id: str) -> int | None:
        current = plan.current.get(device_id) or self.births.current(device_id)
        return current[0] if current is not None else None

    def _birth_for(self, plan: BatchPlan, device_id: str,
                   boot: int) -> tuple[Birth | None, int]:
        """The boot's birth (planned in this batch or known) and its clock-ahead ms."""
        planned = plan.birth_index.get((device_id, boot))
        if planned is not None:
            return planned
        births = self.births
        return births.get(device_id, boot), births.clock_ahead_ms(device_id, boot)

    def _maybe_request_rebirth(self, plan: BatchPlan, device_id: str, now_ms: int) -> None:
        last = self._rebirth_sent.get(device_id)
        if last is None or now_ms - last >= REBIRTH_REQUEST_INTERVAL_MS:
            self._rebirth_sent[device_id] = now_ms
            plan.rebirths.append(device_id)

    def _quarantine(self, plan: BatchPlan, message: InboundMessage, device_id: str | None,
                    exc: ProtocolError) -> None:
        plan.invalid[exc.reason] = plan.invalid.get(exc.reason, 0) + 1
        if device_id is not None:
            plan.invalid_devices[device_id] = plan.invalid_devices.get(device_id, 0) + 1
        plan.write.quarantine.append((message.received_ms, message.topic, device_id, exc.reason,
                                      exc.detail[:500],
                                      message.payload[:store.QUARANTINE_PAYLOAD_BYTES],
                                      len(message.payload)))
        if plan.first_invalid is None:
            plan.first_invalid = f"{device_id or '?'} on {message.topic}: {exc}"

    # ------------------------------------------------------------------ commit and apply
    async def _pace(self) -> None:
        """Hold ingest while healthy forwarders are about to fall out of the entry cache.

        Frames that fall out must later be read back from SQLite and decoded again: with every
        endpoint up, taking them faster than they can be forwarded only doubles the work. An
        endpoint that is failing does not hold ingest: the buffer is there for that.
        """
        cache = self._cache
        limit = cache.max_samples * 3 // 4
        while cache.samples > limit and self._forwarders_keeping_up():
            self._progress.clear()
            await self._progress.wait()

    async def handle(self, messages: list[InboundMessage]) -> None:
        await self._pace()
        async with self._commit_lock:
            now_ms = int(time.time() * 1000)
            plan = self.plan(messages, now_ms)
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
                closed = await self._db.write(lambda conn: self._write(conn, plan))
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
        return store.write_closes(conn, plan.closes, plan.now_ms, plan.reopened)

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
        over = self.buffer_bytes + plan.added_bytes - self._config.max_buffer_bytes
        if over <= 0:
            return
        if self._config.full_policy == "drop_oldest":
            # Frames on the wire are not eligible (the next-oldest go instead), and forwarders
            # leave dropped frames out of their next attempts: a frame counted as dropped is
            # one an endpoint is never sent (docs/operations.md).
            windows = self._cache.windows
            try:
                async with windows.lock:  # no forwarder takes frames while victims are picked
                    keep, endpoints = windows.ranges(), tuple(windows.endpoints)
                    dropped = await self._db.write(
                        lambda conn: store.drop_unsent(conn, over, keep, endpoints))
                    self._cache.discard(dropped.ids)
                    windows.note_dropped(dropped.ids)
            except StoreError as exc:  # the commit that follows retries; so will the next drop
                log.error("buffer full, and dropping the oldest frames failed: %s", exc)
                return
            if dropped.ids:
                log.warning("buffer full: dropped the %d oldest unsent frames (%d bytes)",
                            len(dropped.ids), dropped.bytes)
                self._metrics.frames_dropped.labels("buffer_full").inc(dropped.dropped)
                for endpoint, missed in dropped.missed.items():
                    self._metrics.forward_frames_dropped.labels(endpoint).inc(missed)
                self.buffer_bytes -= dropped.bytes
                self.buffer_frames -= len(dropped.ids)
            return
        self._metrics.buffer_full_waits.inc()
        log.warning("buffer full (%d bytes): ingest waits for the forwarders", self.buffer_bytes)
        # A buffer the forwarders cannot free takes any batch: one batch larger than the cap,
        # or frames held for a birth (only a birth frees them, and it must get in), must not
        # stop ingest for good.
        while (self.buffer_bytes > self._held_bytes()
               and self.buffer_bytes + plan.added_bytes > self._config.max_buffer_bytes):
            self._progress.clear()
            await self._progress.wait()

    def _held_bytes(self) -> int:
        return sum(len(payload) for frames in self.held.values() for _, _, payload in frames)

    def _log_commit_retry(self, retry_state: object) -> None:
        self.last_commit_ok = False
        self._metrics.commit_errors.inc()
        outcome = getattr(retry_state, "outcome", None)
        log.error("group commit failed, retrying (messages stay unacked): %s",
                  outcome.exception() if outcome else "?")

    def _apply(self, plan: BatchPlan) -> None:
        assert plan.overlay is not None
        self.ledger.apply(plan.overlay)
        self._note_closed(plan)
        for device_id, birth, ahead_ms, received_ms in plan.births:
            self.births.put(device_id, birth, ahead_ms, received_ms)
        for key in plan.released:
            self.held.pop(key, None)
            self._held_seqs.pop(key, None)
        for key, frames in plan.held.items():
            self.held.setdefault(key, []).extend(frames)
            index = self._held_seqs.setdefault(key, {})
            for seq, _, payload in frames:
                index.setdefault(seq, set()).add(payload)
        for frame_id, entries in plan.entries:
            self._cache.put(frame_id, entries)
        self._tell_fleet(plan)
        for device_id in plan.rebirths:
            self._mqtt.publish(cmd_topic(self._prefix, device_id),
                               encode_command(DeviceCommand(rebirth=True)), qos=1)
            self._metrics.rebirths_requested.inc()
        self.buffer_bytes += plan.added_bytes
        self.buffer_frames += len(plan.write.frames) + plan.stored_extra
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
        m.frames_held.set(sum(len(v) for v in self.held.values()))
        m.buffer_bytes.set(self.buffer_bytes)
        m.buffer_frames.set(self.buffer_frames)
        if plan.last_frame_id > self.committed_upto:
            self.committed_upto = plan.last_frame_id
            self._on_committed(plan.last_frame_id)

    def _note_closed(self, plan: BatchPlan) -> None:
        closed = self._closed_boots
        assert plan.overlay is not None
        if closed:
            closed.difference_update(plan.overlay.changed)  # boots that stored frames again
        closed.update(key for key in ((close.device_id, close.boot) for close in plan.closes)
                      if key not in plan.reopened)

    def forget_closed(self, keys: Sequence[LedgerKey]) -> None:
        """Boots pruned from the dedup state (their closed_boots rows went with them)."""
        self._closed_boots.difference_update(keys)

    def _tell_fleet(self, plan: BatchPlan) -> None:
        fleet = self._fleet
        observe_telemetry = fleet.observe_telemetry
        for kind, device_id, item, ms in plan.fleet:
            if kind == "telemetry":
                observe_telemetry(device_id, item, ms)  # type: ignore[arg-type]
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
        async with self._commit_lock:
            now_ms = int(time.time() * 1000)
            frame_id = self._next_frame_id
            self._next_frame_id += 1
            payload = b"".join(entries)
            write = store.BatchWrite(frames=[(frame_id, store.KIND_ENTRIES, device_id, 0, None,
                                              now_ms, payload)])
            plan = BatchPlan(write=write, overlay=self.ledger.overlay(),
                             entries=[(frame_id, list(entries))], added_bytes=len(payload),
                             last_frame_id=frame_id)
            await self._make_room(plan)
            await self._commit(plan, 0)
            # Not _apply: these are no device's frames (fleetgate_frames_stored counts those).
            self._cache.put(frame_id, plan.entries[0][1])
            self.buffer_bytes += plan.added_bytes
            self.buffer_frames += 1
            self._metrics.buffer_bytes.set(self.buffer_bytes)
            self._metrics.buffer_frames.set(self.buffer_frames)
            self.committed_upto = frame_id
            self._on_committed(frame_id)
            return frame_id

    async def close_boot(self, device_id: str, boot: int,
                         still_closed: Callable[[], bool]) -> int:
        """Stale markers for every series of a boot gone silent (an offline timeout), unless
        still_closed() says the device came back meanwhile. Returns the markers queued."""
        async with self._commit_lock:
            if not still_closed():
                return 0
            plan = BatchPlan(overlay=self.ledger.overlay(), now_ms=int(time.time() * 1000))
            self._close_boot(plan, device_id, boot, plan.now_ms, self.births.current(device_id))
            if not plan.closes:
                return 0
            plan.last_frame_id = plan.closes[-1].frame_id
            if self._config.full_policy == "drop_oldest":
                await self._make_room(plan)
            # Under block, a boot's markers (small) never wait for room: the lifecycle loop
            # must not stall behind a full buffer, and ending a boot is part of its frames.
            await self._commit(plan, 0)
            self._note_closed(plan)
            for frame_id, entries in plan.entries:
                self._cache.put(frame_id, entries)
            self.buffer_bytes += plan.added_bytes
            self.buffer_frames += plan.stored_extra
            self._metrics.buffer_bytes.set(self.buffer_bytes)
            self._metrics.buffer_frames.set(self.buffer_frames)
            self.committed_upto = plan.last_frame_id
            self._on_committed(plan.last_frame_id)
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
        dropped = 0
        for key in list(self.held):
            kept = [h for h in self.held[key] if h[1] >= before_ms]
            for _seq, _received, payload in self.held[key]:
                if _received < before_ms:
                    self.buffer_bytes -= len(payload)
                    dropped += 1
            if kept:
                self.held[key] = kept
                self._held_seqs[key] = _held_index(kept)
            else:
                del self.held[key]
                self._held_seqs.pop(key, None)
        self._metrics.frames_held.set(sum(len(v) for v in self.held.values()))
        return dropped

    def freed(self, frames: int, size: int) -> None:
        """Forwarders deleted frames: account for the space and unblock a waiting ingest."""
        self.buffer_bytes -= size
        self.buffer_frames -= frames
        self._metrics.buffer_bytes.set(self.buffer_bytes)
        self._metrics.buffer_frames.set(self.buffer_frames)
        self._progress.set()
