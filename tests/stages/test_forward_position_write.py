"""A 2xx whose cursor commit fails (a full disk) must not be sent again (found by the full-disk
fault checker, issue 11: the forwarder loop restarted on the StoreError and resent the request
at every retry, doubling samples at the receiver without any kill). The position write is what
is retried, not the send; nothing is resent and the cursor lands once the disk takes it."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

from gateway.buffer import store
from gateway.buffer.db import Database
from gateway.errors import StoreError
from tests.stages.test_forwarder import drain, fill, make_forwarder, values_of
from tests.support.fakes import FakeRemoteWrite
from tests.support.pipeline_harness import Harness


class CursorWritesFail(Database):
    """Every cursor write fails while `failures` lasts, like SQLite on a full disk."""

    failures = 0

    async def write(self, fn: Any) -> Any:
        name = getattr(fn, "__name__", "")
        code = getattr(fn, "__code__", None)
        touches_cursor = code is not None and any(
            n in code.co_names for n in ("advance_cursor", "set_live_lane"))
        if self.failures and (touches_cursor or name == "close"):
            self.failures -= 1
            raise StoreError("database or disk is full", retryable=True)
        return await super().write(fn)


def test_a_failed_cursor_commit_after_a_2xx_resends_nothing(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    client = FakeRemoteWrite()

    async def go() -> None:
        db = CursorWritesFail(tmp_path / "db", "normal")
        await h.open(db)
        await fill(h, devices=2, frames=30)
        db.failures = 5
        forwarder = make_forwarder(h, client)
        await drain(forwarder)
        assert db.failures == 0
        assert forwarder.cursor == h.buffer.committed_upto
        cursors = await h.db.read(store.load_state)
        assert cursors.cursors[client.endpoint] == h.buffer.committed_upto
        await h.db.close()

    asyncio.run(go())
    sent = Counter(values_of(client.accepted, "device_temperature_celsius"))
    assert len(sent) == 2 * 30
    assert set(sent.values()) == {1}  # each sample accepted once: nothing was resent
