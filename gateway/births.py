"""Known births by (device, boot): what the decoder needs to resolve aliases and labels, and
how far each boot's clock runs ahead of the gateway's."""

from __future__ import annotations

from device_protocol import Birth, TelemetryRows

BirthKey = tuple[str, int]


def clock_ahead_ms(birth_time_ms: int, received_ms: int, tolerance_ms: int) -> int:
    """How far a boot's clock runs ahead of the gateway's, judged by its birth; 0 within
    tolerance. Only "ahead" is knowable: a birth cannot arrive before it was made, whereas one
    that looks behind may just have waited in the broker (or be a replay), so a clock behind is
    left alone. The estimate is low by the birth's delivery delay, never high."""
    ahead = birth_time_ms - received_ms
    return ahead if ahead > tolerance_ms else 0


def shifted(raw: TelemetryRows, ahead_ms: int) -> TelemetryRows:
    """The frame on the gateway's clock: every sample is relative to the frame's t."""
    return TelemetryRows(raw.boot, raw.seq, raw.time_ms - ahead_ms, raw.rows, raw.historical)


class BirthRegistry:
    def __init__(self) -> None:
        self._births: dict[BirthKey, Birth] = {}
        self._ahead: dict[BirthKey, int] = {}  # only boots whose clock runs ahead

    def get(self, device_id: str, boot: int) -> Birth | None:
        return self._births.get((device_id, boot))

    def put(self, device_id: str, birth: Birth, clock_ahead_ms: int = 0) -> None:
        key = (device_id, birth.boot)
        self._births[key] = birth
        if clock_ahead_ms:
            self._ahead[key] = clock_ahead_ms
        else:
            self._ahead.pop(key, None)

    def clock_ahead_ms(self, device_id: str, boot: int) -> int:
        ahead = self._ahead
        return ahead.get((device_id, boot), 0) if ahead else 0

    def forget(self, device_id: str, boot: int) -> None:
        self._births.pop((device_id, boot), None)
        self._ahead.pop((device_id, boot), None)

    def __len__(self) -> int:
        return len(self._births)
