"""Planning a group commit: decode, dedup, hold or release, resolve, compile; no I/O.

    messages -> Planner.plan() -> BatchPlan: the rows one SQLite transaction will write, the
    entries to cache, what to tell the fleet, the rebirths to ask for.

The pipeline (gateway.pipeline.stage) commits the plan and only then applies it to its state.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from device_protocol import (
    Birth,
    FrameKind,
    Limits,
    ProtocolError,
    SchemaError,
    TelemetryRows,
    TimestampOutOfRange,
    decode_birth,
    decode_death,
    decode_telemetry_rows,
    parse_topic,
)
from gateway.buffer import markers, store
from gateway.buffer.buffer import Buffer
from gateway.ingest.inbox import InboundMessage
from gateway.pipeline.births import BootOrder, after, clock_ahead_ms, shifted, supersedes
from gateway.pipeline.dedup import LedgerKey, LedgerOverlay, encode_ranges
from gateway.pipeline.frame_compiler import FrameCompiler
from gateway.pipeline.state import HeldFrame, HeldIndex, PipelineState
from gateway.remote_write.wire import LabelValidationError

log = logging.getLogger(__name__)

REBIRTH_REQUEST_INTERVAL_MS = 30_000  # don't nag a device more often than this
TOPIC_CACHE_SIZE = 300_000  # three topics a device: a 100k-device fleet stays parsed


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
    # death): ("birth", device, Birth, ms) | ("telemetry", device, (TelemetryRows, payload),
    # received_ms)
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
    closes: list[markers.BootClose] = field(default_factory=list)  # boots whose series end here
    closing: set[LedgerKey] = field(default_factory=set)  # their keys: one lookup per frame
    stored_extra: int = 0  # frames of the gateway's own (stale markers) stored with the batch
    reopened: set[LedgerKey] = field(default_factory=set)  # closed, then stored frames again
    now_ms: int = 0


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


class Planner:
    def __init__(self, *, state: PipelineState, buffer: Buffer, limits: Limits,
                 topic_prefix: str, compiler: FrameCompiler) -> None:
        self._state = state
        self._buffer = buffer
        self._limits = limits
        self._prefix = topic_prefix
        self._compiler = compiler
        self._encoder = compiler.encoder
        self._rebirth_sent: dict[str, int] = {}
        self._topics: dict[str, tuple[str, FrameKind]] = {}  # valid topics, parsed once

    def plan(self, messages: Sequence[InboundMessage], now_ms: int) -> BatchPlan:
        """What committing these messages would write and change, without I/O and without
        touching the pipeline's state (the ledger is read through an overlay). Its only
        effects are ones that stay right whatever the commit does (a failed commit is
        retried with this same plan): frame ids reserved, the topic cache, the rebirth
        throttle, and series the compiler learned (handed to this plan's write)."""
        plan = BatchPlan(overlay=self._state.ledger.overlay(), now_ms=now_ms)
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
        closed = self._state.closed_boots
        if closed:  # closed boots that stored frames again (or closed again) are open again
            plan.write.reopened = [key for key in overlay.changed if key in closed]
        if self._compiler.learned:  # series first seen in a boot: kept for its stale markers
            plan.write.boot_series, self._compiler.learned = self._compiler.learned, []
        plan.last_frame_id = self._buffer.last_reserved
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
        copies = [index[seq] for index in (self._state.held_seqs.get(key), plan.held_seqs.get(key))
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
        if key in plan.closing:
            plan.reopened.add(key)  # a frame after its boot's close in this batch (a late one)
        later_ms = max((row[2] for row in raw.rows), default=0)  # samples may carry dt > 0
        plan.overlay.note_newest(key, raw.time_ms + max(later_ms, 0))
        plan.labels_dropped += raw.dropped_labels
        frame_id = self._buffer.reserve_id()
        plan.write.frames.append((frame_id, store.KIND_TELEMETRY, device_id, raw.boot,
                                  raw.seq, received_ms, payload))
        plan.entries.append((frame_id, entries))
        if raw.boot != self._current_boot(plan, device_id):
            raw = TelemetryRows(raw.boot, raw.seq, raw.time_ms, raw.rows, True,  # a past boot's
                                raw.dropped_labels)
        plan.fleet.append(("telemetry", device_id, (raw, payload), received_ms))
        plan.added_bytes += len(payload)

    def _plan_birth(self, plan: BatchPlan, message: InboundMessage, device_id: str,
                    now_ms: int) -> None:
        # No future check: a clock that runs ahead is measured here and corrected for.
        birth = self._state.births.shared(decode_birth(message.payload, limits=self._limits))
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
        previous = plan.current.get(device_id) or self._state.births.current(device_id)
        if self._takes_current(plan, device_id, birth, message.received_ms):
            if previous is not None and previous[0] != birth.boot:  # before the new boot's frames
                self.close_boot(plan, device_id, previous[0], message.received_ms, previous,
                                 next_boot_ms=birth.time_ms - ahead_ms)
            plan.fleet.append(("birth", device_id, birth, message.received_ms))
            frame_id = self._buffer.reserve_id()
            plan.write.frames.append((frame_id, store.KIND_BIRTH, device_id, birth.boot, None,
                                      message.received_ms, message.payload))
            plan.entries.append(
                (frame_id, [self._encoder.info_entry(device_id, birth, message.received_ms)]))
            plan.added_bytes += len(message.payload)
        else:  # kept for its boot's frames; the device stays on its newer boot
            log.info("device %s: birth of past boot %d (t=%d) kept; the current boot stays",
                     device_id, birth.boot, birth.time_ms)
        self._release_held(plan, message, device_id, birth, ahead_ms)

    def _release_held(self, plan: BatchPlan, message: InboundMessage, device_id: str,
                      birth: Birth, ahead_ms: int) -> None:
        """The frames held for this boot's birth go in with it, each checked as it arrived."""
        key = (device_id, birth.boot)
        if key in plan.released:
            return  # a second birth of the boot in this batch: its held frames are released
        waiting = [*self._state.held.get(key, ()), *plan.held.pop(key, ())]
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
        current = plan.current.get(device_id) or self._state.births.current(device_id)
        if not supersedes(current, birth, received_ms):
            return False
        plan.current[device_id] = after(current, birth, received_ms)
        return True

    def _plan_death(self, plan: BatchPlan, message: InboundMessage, device_id: str) -> None:
        """A death of the current boot ends it (the fleet view's boot may be a checkpoint's,
        older than the births': a death of a past boot must not take the device offline)."""
        death = decode_death(message.payload, limits=self._limits)
        current = plan.current.get(device_id) or self._state.births.current(device_id)
        if current is not None and death.boot != current[0]:
            return  # an old connection's Will, redelivered or late: changes nothing
        plan.fleet.append(("death", device_id, death.boot, message.received_ms))
        if current is not None:
            self.close_boot(plan, device_id, death.boot, message.received_ms, current)

    def close_boot(self, plan: BatchPlan, device_id: str, boot: int, close_ms: int,
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
        if key in self._state.closed_boots and key not in plan.overlay.changed:
            return  # closed already (a death, then the next boot's birth) and silent since
        if key in plan.closing:
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
        frame_id = self._buffer.reserve_id()
        plan.closing.add(key)
        plan.closes.append(markers.BootClose(frame_id, device_id, boot,
                                           None if newest is None else newest + 1, info,
                                           info_ms))

    def _current_boot(self, plan: BatchPlan, device_id: str) -> int | None:
        current = plan.current.get(device_id) or self._state.births.current(device_id)
        return current[0] if current is not None else None

    def _birth_for(self, plan: BatchPlan, device_id: str,
                   boot: int) -> tuple[Birth | None, int]:
        """The boot's birth (planned in this batch or known) and its clock-ahead ms."""
        planned = plan.birth_index.get((device_id, boot))
        if planned is not None:
            return planned
        births = self._state.births
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
