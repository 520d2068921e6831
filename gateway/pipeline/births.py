"""Known births by (device, boot): what the decoder needs to resolve aliases and labels, how
far each boot's clock runs ahead of the gateway's, and which boot is each device's current one.

The current boot (docs/protocol.md, "Which boot is current"): the boot of the birth with the
latest device clock `t`; of births with equal `t`, the one that arrived last. A birth of an
older boot - redelivered by a broker after a restart, replayed, or simply late - is kept (its
boot's frames still need it) but does not make its boot current again."""

from __future__ import annotations

import dataclasses

from device_protocol import Birth, TelemetryRows

BirthKey = tuple[str, int]
SHARED_KEPT = 10_000  # distinct declarations/labels/versions kept for sharing (not devices)
BootOrder = tuple[int, int]  # (the birth's device clock t, its arrival on the gateway's clock)


def clock_ahead_ms(birth_time_ms: int, received_ms: int, tolerance_ms: int) -> int:
    """How far a boot's clock runs ahead of the gateway's, judged by its birth; 0 within
    tolerance. Only "ahead" is knowable: a birth cannot arrive before it was made, whereas one
    that looks behind may just have waited in the broker (or be a replay), so a clock behind is
    left alone. The estimate is low by the birth's delivery delay, never high."""
    ahead = birth_time_ms - received_ms
    return ahead if ahead > tolerance_ms else 0


def shifted(raw: TelemetryRows, ahead_ms: int) -> TelemetryRows:
    """The frame on the gateway's clock: every sample is relative to the frame's t."""
    return TelemetryRows(raw.boot, raw.seq, raw.time_ms - ahead_ms, raw.rows, raw.historical,
                         raw.dropped_labels)


def supersedes(current: tuple[int, BootOrder] | None, birth: Birth, received_ms: int) -> bool:
    """Does this birth make (or keep) its boot current, given the current (boot, order)?"""
    return current is None or current[0] == birth.boot or (
        (birth.time_ms, received_ms) >= current[1])


def after(current: tuple[int, BootOrder] | None, birth: Birth,
          received_ms: int) -> tuple[int, BootOrder]:
    """The current (boot, order) once a superseding birth is taken."""
    order = (birth.time_ms, received_ms)
    if current is not None and current[0] == birth.boot:
        order = max(order, current[1])  # a redelivered birth keeps its boot's later order
    return birth.boot, order


class BirthRegistry:
    def __init__(self) -> None:
        self._births: dict[BirthKey, Birth] = {}
        # A fleet runs a few firmwares: births declare the same metrics, labels and versions
        # over and over. Decoded, 20 declarations take ~3 KB a device; shared, ~0.
        self._shared: dict[object, object] = {}
        self._ahead: dict[BirthKey, int] = {}  # only boots whose clock runs ahead
        self._current: dict[str, tuple[int, BootOrder]] = {}  # device -> (boot, its order)

    def shared(self, birth: Birth) -> Birth:
        """The birth with its declarations, labels, platform and firmware replaced by equal
        objects an earlier birth already holds, if any (call once, right after decoding)."""
        shared = self._shared
        if len(shared) >= SHARED_KEPT:
            shared.clear()  # births made so far keep theirs: sharing only starts over
        parts = (birth.metrics, birth.labels, birth.platform, birth.firmware)
        same = tuple(shared.setdefault(part, part) for part in parts)
        if all(a is b for a, b in zip(same, parts, strict=True)):
            return birth
        metrics, labels, platform, firmware = same
        return dataclasses.replace(birth, metrics=metrics, labels=labels,  # type: ignore[arg-type]
                                   platform=str(platform), firmware=str(firmware))

    def get(self, device_id: str, boot: int) -> Birth | None:
        return self._births.get((device_id, boot))

    def current_boot(self, device_id: str) -> int | None:
        current = self._current.get(device_id)
        return current[0] if current is not None else None

    def current(self, device_id: str) -> tuple[int, BootOrder] | None:
        """The device's current boot and its order, if any birth of it is known."""
        return self._current.get(device_id)

    def makes_current(self, device_id: str, birth: Birth, received_ms: int) -> bool:
        """Would this birth make (or keep) its boot the device's current one?"""
        return supersedes(self._current.get(device_id), birth, received_ms)

    def put(self, device_id: str, birth: Birth, clock_ahead_ms: int = 0,
            received_ms: int = 0) -> bool:
        """Record a birth; True if its boot is now the device's current boot."""
        key = (device_id, birth.boot)
        previous = self._current.get(device_id)
        current = supersedes(previous, birth, received_ms)
        if current:
            self._current[device_id] = after(previous, birth, received_ms)
        self._births[key] = birth
        if clock_ahead_ms:
            self._ahead[key] = clock_ahead_ms
        else:
            self._ahead.pop(key, None)
        return current

    def clock_ahead_ms(self, device_id: str, boot: int) -> int:
        ahead = self._ahead
        return ahead.get((device_id, boot), 0) if ahead else 0

    def forget(self, device_id: str, boot: int) -> None:
        self._births.pop((device_id, boot), None)
        self._ahead.pop((device_id, boot), None)
        current = self._current.get(device_id)
        if current is not None and current[0] == boot:
            del self._current[device_id]

    def __len__(self) -> int:
        return len(self._births)
