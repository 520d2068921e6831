"""One gateway per data dir: an exclusive lock held for the gateway's whole life.

Two gateways on one SQLite buffer would each ack, dedup and forward on their own, and the
start-up recovery of one could set aside a file the other is writing. flock is released by the
kernel when the process dies, kill -9 included, so a stale lock never blocks a restart.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from gateway.errors import ConfigError

LOCK_NAME = "fleetgate.lock"


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ConfigError(f"data_dir {self.path.parent} is in use by another fleetgate "
                              f"(pid {holder})",
                              hint="stop it, or give this gateway its own data_dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None
