"""The real Gateway started and stopped in-process: its wiring, SQLite in tmp_path and the API on
a loopback port, with the two network seams faked (FakeIngest where MqttIngest is built, a
FakeRemoteWrite as every endpoint's client; no Mosquitto, no receiver). The order of start-up
and shutdown is read from the calls the fakes and the wrapped database and lock record on one
timeline:

- start-up: the API listens before MQTT starts; nothing is acknowledged before SQLite holds it;
- shutdown (gateway/app.py's docstring): ingest stopped first, what is in hand committed (then
  acknowledged), the last forward under the deadline, the fleet checkpoint, the database
  closed, the data-dir lock released.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

import tests.support.factories as f
from devstack.ports import free_port, tcp_accepts
from gateway import app
from gateway.forward.client import SendResult
from gateway.ingest.inbox import InboundMessage
from gateway.settings import Settings
from tests.support.fakes import FakeIngest, FakeRemoteWrite
from tests.support.pipeline_harness import birth_msg, tele_msg

pytestmark = pytest.mark.timeout(60)


class Receiver(FakeRemoteWrite):
    """A remote-write endpoint that puts its requests and its closing on the timeline."""

    def __init__(self, calls: list[str]) -> None:
        super().__init__()
        self.calls = calls
        self.got_samples = asyncio.Event()

    async def send(self, compressed_body: bytes) -> SendResult:
        result = await super().send(compressed_body)
        self.calls.append("send")
        if any(samples for _, samples in self.accepted):
            self.got_samples.set()
        return result

    async def aclose(self) -> None:
        self.calls.append("client close")
        await super().aclose()


class World:
    """The gateway under test, its fakes and the timeline they share."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.settings = Settings(
            data_dir=data_dir, remote_write_url=["http://127.0.0.1:9/write"],
            api_listen=f"127.0.0.1:{self.port}", sqlite_startup_check="off",
            fleet_metrics_interval_s=0, commit_max_delay_ms=0, remote_write_flush_ms=0,
            shutdown_forward_deadline_s=5)
        self.db_path = data_dir / "fleetgate.db"
        self.calls: list[str] = []
        self.api_accepted_at_mqtt_start: bool | None = None
        self.stored_at_ack: list[tuple[int, int]] = []  # (frames, births) in SQLite at each ack
        self.acked = asyncio.Event()
        self.receiver = Receiver(self.calls)
        self.ingest: FakeIngest | None = None

    def make_ingest(self, config: object, inbox: Any, **kwargs: Any) -> FakeIngest:
        self.ingest = FakeIngest(config, inbox, calls=self.calls, on_start=self._mqtt_starts,
                                 on_ack=self._acked, **kwargs)
        return self.ingest

    def _mqtt_starts(self) -> None:
        self.api_accepted_at_mqtt_start = tcp_accepts(self.port)

    def _acked(self, messages: list[InboundMessage]) -> None:
        self.stored_at_ack.append(self.stored())
        self.acked.set()

    def stored(self) -> tuple[int, int]:
        """Frames and births committed in SQLite now (another connection: committed only)."""
        conn = sqlite3.connect(self.db_path)
        try:
            frames = conn.execute("SELECT COUNT(*) FROM frames").fetchone()[0]
            births = conn.execute("SELECT COUNT(*) FROM births").fetchone()[0]
            return frames, births
        finally:
            conn.close()

    def record(self, name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        """call, putting `name` on the timeline first (sync or async alike)."""

        @functools.wraps(call)
        def recorded(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return call(*args, **kwargs)

        return recorded

    @property
    def after_stop(self) -> list[str]:
        return self.calls[self.calls.index("ingest stop"):]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    with mock.patch.object(app, "MqttIngest", w.make_ingest), \
            mock.patch.object(app, "HttpRemoteWriteClient", lambda *a, **k: w.receiver):
        yield w


async def started(world: World, monkeypatch: pytest.MonkeyPatch) -> app.Gateway:
    gateway = app.Gateway(world.settings)
    monkeypatch.setattr(gateway.db, "close", world.record("db close", gateway.db.close))
    monkeypatch.setattr(gateway.lock, "release", world.record("lock release",
                                                              gateway.lock.release))
    await gateway.start()
    checkpoint = gateway.jobs.checkpoint
    monkeypatch.setattr(checkpoint, "tick", world.record("checkpoint", checkpoint.tick))
    return gateway


def test_the_api_listens_before_mqtt_starts_and_nothing_is_acked_before_commit(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    async def go() -> None:
        gateway = await started(world, monkeypatch)
        try:
            assert world.api_accepted_at_mqtt_start is True
            assert world.ingest is not None and world.ingest.connected
            world.ingest.deliver(birth_msg(1), tele_msg(1, 0, f.now_ms()))
            await world.acked.wait()
            await world.receiver.got_samples.wait()  # and it is forwarded
        finally:
            await gateway.shutdown()
        assert not gateway.failed

    asyncio.run(go())
    assert world.calls[0] == "mqtt start"
    assert world.ingest is not None and len(world.ingest.acked) == 2
    frames, births = world.stored_at_ack[0]
    assert frames >= 1 and births == 1  # the batch was in SQLite when it was acknowledged


def test_shutdown_stops_ingest_commits_in_hand_forwards_checkpoints_then_closes(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    async def go() -> None:
        gateway = await started(world, monkeypatch)
        assert world.ingest is not None
        world.ingest.deliver(birth_msg(1))
        await world.acked.wait()
        # In hand when the stop comes: delivered, not yet taken by the pipeline.
        world.ingest.deliver(tele_msg(1, 0, f.now_ms()), tele_msg(1, 1, f.now_ms()))
        await gateway.shutdown()
        assert not gateway.failed
        assert all(task.done() for task in gateway._tasks)

    asyncio.run(go())
    after = world.after_stop
    assert after[0] == "ingest stop"
    assert after[1] == "ack 2"  # what was in hand, committed after ingest stopped
    assert world.stored_at_ack[-1][0] >= 2  # ... and in SQLite before its acknowledgement
    last_send = len(after) - 1 - after[::-1].index("send")
    assert 1 < last_send < after.index("checkpoint")  # the last forward, then the checkpoint
    assert after[after.index("checkpoint"):] == [
        "checkpoint", "client close", "db close", "lock release"]
    assert world.receiver.got_samples.is_set()  # the frames in hand reached the endpoint
    conn = sqlite3.connect(world.db_path)
    try:  # the checkpoint wrote the device's latest state
        assert conn.execute("SELECT device_id, last_seq FROM devices").fetchall() == [
            (f.device_id(1), 1)]
    finally:
        conn.close()


def test_shutdown_does_not_wait_the_forward_deadline_for_a_paused_endpoint(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """A paused endpoint (wrong credentials) cannot take anything: the last forward of a stop
    must not wait shutdown_forward_deadline_s for it (found by the secure-receiver tests: every
    stop of such a gateway took the whole deadline). Its frames stay buffered."""
    from gateway.forward.client import Misconfigured

    world.settings = world.settings.model_copy(update={"shutdown_forward_deadline_s": 40.0})

    async def go() -> None:
        refused = asyncio.Event()

        def respond(series: object) -> Misconfigured:
            refused.set()
            return Misconfigured(401, "HTTP 401: wrong password")

        world.receiver._respond = respond
        gateway = await started(world, monkeypatch)
        assert world.ingest is not None
        world.ingest.deliver(birth_msg(1), tele_msg(1, 0, f.now_ms()))
        await refused.wait()  # we run again once the forwarder waits in its pause
        assert gateway.forwarders[0].status.paused is not None
        # Far below the 40 s deadline, so a stop that waited for the paused endpoint fails here.
        await asyncio.wait_for(gateway.shutdown(), timeout=15)
        assert not gateway.failed

    asyncio.run(go())
    assert world.stored()[0] >= 1  # nothing was taken: the frames wait for the next start
