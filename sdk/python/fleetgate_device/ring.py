"""The ring of frames a device could not send: bounded, oldest dropped first when full.

A frame enters the ring already encoded as it will be replayed (with `h: true`), keeping the
boot, seq and time it was built with. `take` hands the oldest frame out for a replay; `done`
says its replay was acknowledged (a file ring forgets it only then, so a crash between the two
replays it again: the gateway drops the copy by (boot, seq)).

`MemoryRing` models RAM: lost when the process ends. `FileRing` (file_ring.py) survives it.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple, Protocol


class Ringed(NamedTuple):
    boot: int
    seq: int
    time_ms: int
    payload: bytes  # the telemetry payload with h=true


class Ring(Protocol):
    persistent: bool

    def __len__(self) -> int:
        """Frames waiting to be taken."""
        ...

    def push(self, frame: Ringed) -> int:
        """Keep a frame; returns how many older frames were dropped to make room (0 or 1;
        1 with itself when the ring holds nothing)."""
        ...

    def take(self) -> Ringed | None:
        """The oldest waiting frame, now in flight, or None."""
        ...

    def done(self, frame: Ringed) -> None:
        """A taken frame's replay was acknowledged."""
        ...

    def remember_birth(self, boot: int, payload: bytes) -> None:
        """The latest birth of a boot, for replaying its frames after a restart."""
        ...

    def birth(self, boot: int) -> bytes | None:
        ...

    def close(self) -> None:
        ...


class MemoryRing:
    persistent = False

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError(f"ring size must be >= 0, got {size}")
        self.size = size
        self._frames: deque[Ringed] = deque()
        self._births: dict[int, bytes] = {}

    def __len__(self) -> int:
        return len(self._frames)

    def push(self, frame: Ringed) -> int:
        if self.size == 0:
            return 1
        dropped = 0
        if len(self._frames) >= self.size:
            self._frames.popleft()
            dropped = 1
        self._frames.append(frame)
        return dropped

    def take(self) -> Ringed | None:
        return self._frames.popleft() if self._frames else None

    def done(self, frame: Ringed) -> None:
        pass

    def remember_birth(self, boot: int, payload: bytes) -> None:
        self._births[boot] = payload

    def birth(self, boot: int) -> bytes | None:
        return self._births.get(boot)

    def clear(self) -> int:
        """Forget every frame (a reboot clears RAM); returns how many there were."""
        lost = len(self._frames)
        self._frames.clear()
        self._births.clear()
        return lost

    def close(self) -> None:
        pass
