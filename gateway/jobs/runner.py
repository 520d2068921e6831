"""The runner of background jobs: one `tick(now_ms)` at a time, on a schedule, where a tick
that fails on SQLite is counted and the job goes on at its next tick."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from prometheus_client import Counter

from gateway.errors import StoreError

log = logging.getLogger(__name__)

T = TypeVar("T")


class Job(Protocol):
    async def tick(self, now_ms: int) -> object:
        """One round of the job's work as of now_ms (wall clock, ms)."""
        ...


class Db(Protocol):
    """What jobs need of the buffer's database (gateway.buffer.db.Database)."""

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...


def wall_ms() -> int:
    return int(time.time() * 1000)


class Runner:
    """Calls jobs' ticks; `errors` is fleetgate_background_errors_total{task}."""

    def __init__(self, errors: Counter, clock: Callable[[], int] = wall_ms) -> None:
        self._errors = errors
        self._clock = clock

    async def survive(self, task: str, job: Job, now_ms: int | None = None) -> bool:
        """Run one tick of a background job; a SQLite error (a full disk, an I/O error) is
        logged and counted, and the job goes on at its next tick: jobs own nothing that a
        failed tick loses (checkpoint rows and events are kept for the next one), and a dead
        loop would take the gateway down into a supervisor's restart loop."""
        try:
            await job.tick(self._clock() if now_ms is None else now_ms)
            return True
        except StoreError as exc:
            self._errors.labels(task).inc()
            log.error("%s failed, retried at its next tick: %s", task, exc)
            return False

    async def every(self, interval_s: float, *jobs: tuple[str, Job],
                    at_start: bool = False) -> None:
        """Forever: wait interval_s, then one tick of each job in turn (first at once if
        at_start)."""
        if at_start:
            await self._round(jobs)
        while True:
            await asyncio.sleep(interval_s)
            await self._round(jobs)

    async def when_signalled(self, task: str, job: Job, signal: asyncio.Event,
                             at_most_s: float) -> None:
        """Forever: one tick as soon as signal is set, or at_most_s after the last."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(signal.wait(), at_most_s)
            signal.clear()
            await self.survive(task, job)

    async def _round(self, jobs: tuple[tuple[str, Job], ...]) -> None:
        for task, job in jobs:
            await self.survive(task, job)
