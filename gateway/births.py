"""Known births by (device, boot): what the decoder needs to resolve aliases and labels."""

from __future__ import annotations

from device_protocol import Birth

BirthKey = tuple[str, int]


class BirthRegistry:
    def __init__(self) -> None:
        self._births: dict[BirthKey, Birth] = {}

    def get(self, device_id: str, boot: int) -> Birth | None:
        return self._births.get((device_id, boot))

    def put(self, device_id: str, birth: Birth) -> None:
        self._births[(device_id, birth.boot)] = birth

    def forget(self, device_id: str, boot: int) -> None:
        self._births.pop((device_id, boot), None)

    def __len__(self) -> int:
        return len(self._births)
