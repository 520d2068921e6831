"""Retry waits grow: exponential backoff with bounded jitter (each wait within 0.8..1.0 of its
base, the base doubling up to remote_write_retry_max_s), for the forwarder's send retries and
its buffer-error loop. The sleeps are recorded, never slept."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import httpx
import pytest

import tests.support.factories as f
from gateway.buffer import store
from tests.support.forward_harness import CONFIG, RecordingReceiver, drain, make_forwarder
from tests.support.pipeline_harness import Harness, birth_msg, tele_msg

SLOW = dataclasses.replace(CONFIG, retry_min_s=0.1, retry_max_s=1.6)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every asyncio.sleep of 50 ms or more is recorded and returns at once."""
    recorded: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(delay: float, result: object = None) -> object:
        if delay >= 0.05:
            recorded.append(delay)
            delay = 0
        return await real_sleep(delay, result)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    return recorded


def assert_grows(waits: list[float]) -> None:
    bases = [min(SLOW.retry_max_s, SLOW.retry_min_s * 2**n) for n in range(len(waits))]
    for wait, base in zip(waits, bases, strict=True):
        assert 0.8 * base <= wait <= base, (waits, bases)
    assert len(set(waits)) == len(waits)  # jittered, not a fixed schedule


def test_send_retries_back_off_exponentially_with_bounded_jitter(
        tmp_path: Path, sleeps: list[float]) -> None:
    h = Harness(tmp_path / "db")
    answers = [httpx.Response(503)] * 7
    receiver = RecordingReceiver(lambda series: answers.pop() if answers else httpx.Response(204))

    async def go() -> None:
        await h.open()
        await h.pipeline.handle([birth_msg(1), tele_msg(1, 0, f.now_ms())])
        await drain(make_forwarder(h, receiver.client(), config=SLOW))
        await h.db.close()

    asyncio.run(go())
    assert len(receiver.requests) == 8
    assert_grows(sleeps)


def test_buffer_errors_back_off_exponentially_with_bounded_jitter(
        tmp_path: Path, sleeps: list[float], monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    h = Harness(tmp_path / "db")
    failures = [sqlite3.OperationalError("disk I/O error")] * 6
    real_fetch = store.fetch_frames

    def failing_fetch(conn, after_id, limit):  # type: ignore[no-untyped-def]
        if failures:
            raise failures.pop()
        return real_fetch(conn, after_id, limit)

    monkeypatch.setattr(store, "fetch_frames", failing_fetch)
    from gateway.buffer.entry_cache import EntryCache

    async def go() -> None:
        await h.open()
        await h.pipeline.handle([birth_msg(1), tele_msg(1, 0, f.now_ms())])
        await drain(make_forwarder(h, RecordingReceiver().client(), config=SLOW,
                                   cache=EntryCache()))
        await h.db.close()

    asyncio.run(go())
    assert_grows(sleeps)
