"""The gateway's background loops wait out a failing disk (found by the full-disk fault checker,
issue 11): a tick that fails on SQLite - ENOSPC during a fleet checkpoint, while writing device
events, while pruning - is logged and counted, the gateway stays up, and what the tick owned
(dirty checkpoint rows, events) is written by the next tick. Before, the checkpoint task died on
the StoreError and took the gateway down, into a supervisor's restart loop on the same error.

The real Gateway wiring, with the MQTT side and the receiver faked, its loops not started."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Coroutine
from pathlib import Path
from typing import Any
from unittest import mock

import tests.support.factories as f
from gateway import app
from gateway.buffer.db import Database
from gateway.errors import StoreError
from gateway.settings import Settings
from tests.support.fakes import FakeMqtt, FakeRemoteWrite
from tests.support.pipeline_harness import birth_msg


class Broker(FakeMqtt):
    def __init__(self, *_args: Any, **_kwargs: Any) -> None:
        super().__init__()

    def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


class Quiet(app.Gateway):
    """No API, no background tasks: the test runs each tick itself."""

    async def _start_api(self) -> None:
        pass

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        coro.close()


class FullDisk:
    """Database.write failing like SQLite on a full disk while `full` is set."""

    def __init__(self) -> None:
        self.full = False
        self._write = Database.write

    async def write(self, db: Database, fn: Any) -> Any:
        if self.full:
            raise StoreError("database or disk is full", retryable=True)
        return await self._write(db, fn)


def rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_a_full_disk_during_background_ticks_is_waited_out(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, remote_write_url=["http://127.0.0.1:9/write"],
                        fleet_metrics_interval_s=0, sqlite_startup_check="off")
    disk = FullDisk()

    async def go() -> None:
        receiver = FakeRemoteWrite()
        with mock.patch.object(app, "MqttIngest", Broker), \
                mock.patch.object(app, "HttpRemoteWriteClient", lambda *a, **k: receiver), \
                mock.patch.object(Database, "write", lambda db, fn: disk.write(db, fn)):
            gw = Quiet(settings)
            await gw.start()
            await gw.pipeline.handle([birth_msg(1)])  # a device comes online: an event
            jobs, run = gw.jobs, gw.jobs.runner
            disk.full = True
            assert not await run.survive("lifecycle", jobs.lifecycle)
            assert not await run.survive("fleet-checkpoint", jobs.checkpoint)
            assert not await run.survive("prune-events", jobs.prune_events)
            assert not gw.failed
            failures = gw.metrics.registry.get_sample_value(
                "fleetgate_background_errors_total", {"task": "fleet-checkpoint"})
            assert failures == 1
            disk.full = False
            assert await run.survive("lifecycle", jobs.lifecycle)
            assert await run.survive("fleet-checkpoint", jobs.checkpoint)
            await gw.db.close()
            gw.lock.release()

    asyncio.run(go())
    # Nothing the failed ticks owned was lost: the device's row and its online event landed.
    assert rows(tmp_path / "fleetgate.db", "SELECT device_id FROM devices") == [
        (f.device_id(1),)]
    assert rows(tmp_path / "fleetgate.db", "SELECT device_id, state FROM device_events") == [
        (f.device_id(1), "online")]
