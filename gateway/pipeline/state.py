"""What the pipeline remembers between batches, and how it is rebuilt from SQLite at start-up.

Only a committed batch changes it (Pipeline._apply): planning reads it through an overlay.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from device_protocol import DEFAULT_LIMITS, ProtocolError, decode_birth
from gateway.buffer import store
from gateway.pipeline.births import BirthRegistry, clock_ahead_ms
from gateway.pipeline.dedup import Ledger, LedgerKey, decode_ranges

log = logging.getLogger(__name__)

HeldFrame = tuple[int, int, bytes]  # (seq, received_ms, payload)


HeldIndex = dict[int, set[bytes]]  # seq -> the payloads held with it: O(1) dedup per frame


def held_index(frames: Sequence[HeldFrame]) -> HeldIndex:
    index: HeldIndex = {}
    for seq, _, payload in frames:
        index.setdefault(seq, set()).add(payload)
    return index


@dataclass(slots=True)
class PipelineState:
    ledger: Ledger
    births: BirthRegistry = field(default_factory=BirthRegistry)
    held: dict[LedgerKey, list[HeldFrame]] = field(default_factory=dict)  # waiting for a birth
    # Boots whose stale markers are queued and that stored nothing since: a second close
    # (a death, then the next boot's birth; a Will redelivered after a restart) would send
    # them again. Kept in SQLite too (closed_boots), written with the markers.
    closed_boots: set[LedgerKey] = field(default_factory=set)
    # seq -> payloads of the held frames: a copy is held again only if its bytes differ
    held_seqs: dict[LedgerKey, HeldIndex] = field(init=False)

    def __post_init__(self) -> None:
        self.held_seqs = {key: held_index(frames) for key, frames in self.held.items()}

    def held_bytes(self) -> int:
        return sum(len(payload) for frames in self.held.values() for _, _, payload in frames)

    def held_count(self) -> int:
        return sum(len(frames) for frames in self.held.values())


def restore_state(state: store.StoredState, ledger_max_ranges: int,
                  clock_tolerance_ms: int = DEFAULT_LIMITS.max_future_skew_ms) -> PipelineState:
    """The pipeline's memory rebuilt from what SQLite holds, at start-up."""
    ledger = Ledger(ledger_max_ranges)
    for device_id, boot, ranges, newest_ms in state.ledger:
        ledger.load((device_id, boot), decode_ranges(ranges), newest_ms)
    births = BirthRegistry()
    for device_id, boot, received_ms, payload, ahead_ms in state.births:
        try:
            birth = births.shared(decode_birth(payload))
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
    closed = {(device_id, boot) for device_id, boot in state.closed_boots}
    return PipelineState(ledger, births, held, closed)
