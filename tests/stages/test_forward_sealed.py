"""Draining an outage from sealed blocks: frames that fell out of the entry cache while the
endpoint was down are sent as the request bodies compressed when they fell out, never read
back from SQLite, each sample once and every series in order; a block too large after a 413,
refused, or with a frame dropped from it goes frame by frame like any request."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import tests.support.factories as f
from gateway.buffer import store
from gateway.buffer.entry_cache import EntryCache, Sealed, SendWindows
from gateway.forward.client import SendResult, TooLarge
from gateway.forward.forwarder import Forwarder
from gateway.forward.order import Request
from gateway.remote_write.wire import compress, decompress
from tests.stages.test_forwarder import (
    LIVE_FIRST,
    make_forwarder,
    temperature_seqs,
    values_of,
    wait_until,
)
from tests.support.fakes import Accepted, FakeRemoteWrite, Rejected, Retryable
from tests.support.pipeline_harness import Harness, birth_msg, tele_msg

DEVICES, FRAMES = 3, 100
Series = list[tuple[dict[str, str], list[tuple[float, int]]]]


class Receiver(FakeRemoteWrite):
    """Down (503) until `up`; records the compressed bodies it was sent."""

    def __init__(self, respond: object = None) -> None:
        super().__init__(self._answer)
        self.up = False
        self.bodies: list[bytes] = []
        self._then = respond

    def _answer(self, series: Series) -> SendResult:
        if not self.up:
            return Retryable(503, "down", 0.001)
        return self._then(series) if callable(self._then) else Accepted(204)

    async def send(self, compressed_body: bytes) -> SendResult:
        if self.up:
            self.bodies.append(compressed_body)
        return await super().send(compressed_body)


@pytest.fixture(autouse=True)
def roomy_volume(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spill files start only with room left on the volume: pretend there is (a test of the
    rule pretends otherwise), so that these tests do not depend on the machine's disk."""
    import os

    real = os.statvfs

    def roomy(path: object) -> os.statvfs_result:
        fields = list(real(path))  # type: ignore[arg-type]
        fields[2] = max(fields[2], (1 << 30) // max(fields[1], 1))  # f_blocks: >= 1 GiB
        fields[4] = fields[2]  # f_bavail = f_blocks: all of it free
        return os.statvfs_result(fields)

    monkeypatch.setattr(os, "statvfs", roomy)


def outage_harness(tmp_path: Path) -> Harness:
    h = Harness(tmp_path / "db")
    h.cache = EntryCache(max_samples=40)  # a few frames: the rest fall out during the outage
    return h


async def outage(h: Harness, receiver: Receiver) -> tuple[Forwarder, asyncio.Task[None]]:
    """The endpoint is down while the backlog comes in; its forwarder is retrying."""
    await h.open()
    forwarder = make_forwarder(h, receiver)
    task = asyncio.create_task(forwarder.run())
    base = f.now_ms() - 600_000
    await h.pipeline.handle([birth_msg(i) for i in range(DEVICES)])
    await wait_until(lambda: len(receiver.requests) >= 1)  # failing
    for seq in range(FRAMES):
        await h.pipeline.handle([tele_msg(i, seq, base) for i in range(DEVICES)])
    return forwarder, task


def sealed_blocks(cache: EntryCache, upto: int) -> list[Sealed]:
    found = [cache.sealed_at(i) for i in range(upto + 1)]
    return [b for b in found if b is not None]


def assert_each_once_in_order(accepted: Series) -> None:
    temps = values_of(accepted, "device_temperature_celsius")
    assert sorted(temps) == sorted(f.sample_value(i, s) for i in range(DEVICES)
                                   for s in range(FRAMES))
    for i in range(DEVICES):  # per series, in seq order
        mine = [v for v in temps if int(v) // 100_000 == i]
        assert mine == sorted(mine)


def count_fetches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    rows_read: list[int] = []
    real_fetch = store.fetch_frames

    def counting_fetch(conn, after_id, limit):  # type: ignore[no-untyped-def]
        rows = real_fetch(conn, after_id, limit)
        rows_read.extend(row.id for row in rows)
        return rows

    monkeypatch.setattr(store, "fetch_frames", counting_fetch)
    return rows_read


def test_an_outage_drains_from_sealed_blocks_sent_as_they_were_compressed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = outage_harness(tmp_path)
    receiver = Receiver()
    rows_read = count_fetches(monkeypatch)
    blocks: list[Sealed] = []

    spill_dir = tmp_path / "sealed"  # beside the database

    async def go() -> None:
        forwarder, task = await outage(h, receiver)
        for block in sealed_blocks(h.cache, h.buffer.committed_upto):
            assert block.spilled is not None and not block.body  # on disk, not in memory
            loaded = await h.cache.load(block)
            assert loaded is not None
            blocks.append(loaded)
        assert sum(p.stat().st_size for p in spill_dir.iterdir()) == h.cache.sealed_bytes > 0
        receiver.up = True
        forwarder.begin_drain()
        await asyncio.wait_for(task, 10)
        assert forwarder.cursor == h.buffer.committed_upto
        h.cache.evict_upto(forwarder.cursor)  # as Buffer.freed does (the harness's own
        assert h.cache.sealed_bytes == 0  # reader, a commit log, stays at 0): let go
        assert list(spill_dir.iterdir()) == []
        await h.db.close()

    asyncio.run(go())
    assert len(blocks) >= 5  # most of the 300 frames of 3 samples, 50 samples a request
    in_blocks = {i for b in blocks for i in range(b.first_id, b.last_id + 1)}
    assert not in_blocks & set(rows_read)  # none of them read back from SQLite
    sent_as_is = [body for body in receiver.bodies if any(body == b.body for b in blocks)]
    assert sent_as_is == [b.body for b in blocks]  # each once, in order
    assert_each_once_in_order(receiver.accepted)
    assert h.rows("SELECT COUNT(*) FROM frames") == [(0,)]


def test_after_a_413_blocks_larger_than_a_request_go_frame_by_frame(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = outage_harness(tmp_path)
    receiver = Receiver(lambda series: TooLarge(413, "too big") if sum(
        len(s) for _, s in series) > 30 else Accepted(204))

    async def go() -> None:
        forwarder, task = await outage(h, receiver)
        assert sealed_blocks(h.cache, h.buffer.committed_upto)
        receiver.up = True
        forwarder.begin_drain()
        await asyncio.wait_for(task, 10)
        assert forwarder.status.max_samples_per_request <= 25  # half the refused block
        await h.db.close()

    asyncio.run(go())
    assert_each_once_in_order(receiver.accepted)
    assert all(sum(len(s) for _, s in r) <= 25 for r in receiver.requests[-10:])
    assert sum(1 for r in receiver.requests if sum(len(s) for _, s in r) > 30) == 1


def test_a_refused_block_is_dead_lettered_sample_by_sample(tmp_path: Path) -> None:
    h = outage_harness(tmp_path)
    refused: list[int] = []

    def first_refused(series: Series) -> SendResult:
        if not refused and len(series) > 1:  # the first request with samples
            refused.append(sum(len(s) for _, s in series))
            return Rejected(400, "bad")
        return Accepted(204)

    receiver = Receiver(first_refused)

    async def go() -> None:
        forwarder, task = await outage(h, receiver)
        first = sealed_blocks(h.cache, h.buffer.committed_upto)[0]
        assert forwarder.cursor < first.first_id  # the births' request comes first
        receiver.up = True
        forwarder.begin_drain()
        await asyncio.wait_for(task, 10)
        await h.db.close()

    asyncio.run(go())
    assert h.rows("SELECT COUNT(*) FROM dead_letters") == [(refused[0],)]
    sent = len(values_of(receiver.accepted, "device_temperature_celsius"))
    dead = h.rows("SELECT COUNT(*) FROM dead_letters WHERE series LIKE"
                  " 'device_temperature_celsius%'")[0][0]
    assert sent + dead == DEVICES * FRAMES


def test_a_frame_dropped_from_a_block_in_flight_is_left_out_of_its_next_attempt() -> None:
    frames = [(i, [b"\x0a\x01" + bytes([i])]) for i in (5, 6, 7)]
    block = Sealed(5, 7, __import__("array").array("I", [1, 1, 1]), 3,
                   compress(b"".join(e for _, es in frames for e in es)))
    windows = SendWindows()
    windows.hold("ep", "backlog", 4, 7)

    async def go() -> tuple[bytes, int, bytes, int]:
        request = Request("ep", [], windows, block)
        whole = await request.attempt()
        assert windows.ranges() == [(4, 7)]  # on the wire: not eligible for dropping
        request.landed()
        windows.note_dropped([6])
        again = await request.attempt()
        return (*whole, *again)

    whole, samples, again, left = asyncio.run(go())
    assert whole is block.body and samples == 3
    assert (decompress(again), left) == (b"\x0a\x01\x05\x0a\x01\x07", 2)


def test_a_spilled_block_that_cannot_be_read_is_read_back_from_sqlite(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.buffer.entry_cache import Spill

    h = outage_harness(tmp_path)
    receiver = Receiver()
    rows_read = count_fetches(monkeypatch)
    real_read = Spill.read
    failed: list[tuple[int, int, int]] = []

    def every_other_fails(self: Spill, where: tuple[int, int, int]) -> bytes:
        if len(failed) < 2:  # the first two blocks: a bad sector, say
            failed.append(where)
            raise OSError("EIO")
        return real_read(self, where)

    monkeypatch.setattr(Spill, "read", every_other_fails)

    async def go() -> None:
        forwarder, task = await outage(h, receiver)
        receiver.up = True
        forwarder.begin_drain()
        await asyncio.wait_for(task, 10)
        await h.db.close()

    asyncio.run(go())
    assert len(failed) == 2 and rows_read  # those frames came from SQLite instead
    assert_each_once_in_order(receiver.accepted)


def test_the_spill_files_of_an_earlier_run_are_deleted_and_the_last_forwarder_deletes_its_own(
        tmp_path: Path) -> None:
    spill_dir = tmp_path / "sealed"
    spill_dir.mkdir()
    (spill_dir / "00000000.sealed").write_bytes(b"from a run that was killed")
    h = outage_harness(tmp_path)
    receiver = Receiver()

    async def go() -> None:
        forwarder, task = await outage(h, receiver)
        assert [p.read_bytes() for p in spill_dir.iterdir()] != [b"from a run that was killed"]
        assert h.cache.sealed_bytes > 0
        forwarder.stop_retrying()
        await asyncio.wait_for(task, 10)
        await forwarder.aclose()
        assert list(spill_dir.iterdir()) == [] and h.cache.sealed_bytes == 0
        await h.db.close()

    asyncio.run(go())


def test_with_live_first_new_frames_go_ahead_of_sealed_blocks_each_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.forward import forwarder as forwarder_module

    monkeypatch.setattr(forwarder_module, "LIVE_LANE_MIN_BACKLOG", 20)
    h = outage_harness(tmp_path)

    class Slow(Receiver):
        async def send(self, compressed_body: bytes) -> SendResult:
            if self.up:
                await asyncio.sleep(0.01)  # live frames arrive mid-drain
            return await super().send(compressed_body)

    receiver = Slow()
    base = f.now_ms() - 600_000

    async def go() -> None:
        await h.open()
        forwarder = make_forwarder(h, receiver, config=LIVE_FIRST)
        task = asyncio.create_task(forwarder.run())
        await h.pipeline.handle([birth_msg(i) for i in range(DEVICES)])
        await wait_until(lambda: len(receiver.requests) >= 1)
        for seq in range(FRAMES):
            await h.pipeline.handle([tele_msg(i, seq, base) for i in range(DEVICES)])
        assert sealed_blocks(h.cache, h.buffer.committed_upto)
        receiver.up = True
        await wait_until(lambda: len(receiver.bodies) >= 2)  # draining by now
        await h.pipeline.handle([tele_msg(i, s, base) for s in range(FRAMES, FRAMES + 10)
                                 for i in range(DEVICES)])
        forwarder.begin_drain()
        await asyncio.wait_for(task, 10)
        assert forwarder.cursor == h.buffer.committed_upto
        assert forwarder.status.live_lane is None
        await h.db.close()

    asyncio.run(go())
    per_request = temperature_seqs(receiver.requests[-len(receiver.bodies):])  # once up
    sent = [x for request in per_request for x in request]
    assert sorted(sent) == sorted((i, s) for i in range(DEVICES) for s in range(FRAMES + 10))
    first_live = next(n for n, r in enumerate(per_request) if any(s >= FRAMES for _, s in r))
    last_backlog = max(n for n, r in enumerate(per_request) if any(s < FRAMES for _, s in r))
    assert first_live < last_backlog  # the live frames did not wait for the backlog


def test_no_spill_file_starts_when_the_volume_has_little_room_left(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    real = os.statvfs

    def nearly_full(path: object) -> os.statvfs_result:
        st = real(path)  # type: ignore[arg-type]
        fields = list(st)
        fields[4] = 1 << 10  # f_bavail: 1,024 blocks free
        return os.statvfs_result(fields)

    monkeypatch.setattr(os, "statvfs", nearly_full)
    h = outage_harness(tmp_path)
    receiver = Receiver()

    async def go() -> None:
        forwarder, task = await outage(h, receiver)
        assert sealed_blocks(h.cache, h.buffer.committed_upto) == []  # left to SQLite
        assert list((tmp_path / "sealed").iterdir()) == []
        receiver.up = True
        forwarder.begin_drain()
        await asyncio.wait_for(task, 10)
        await h.db.close()

    asyncio.run(go())
    assert_each_once_in_order(receiver.accepted)


def test_killed_mid_drain_the_restart_reads_the_rest_back_and_resends_at_most_one_request(
        tmp_path: Path) -> None:
    import contextlib
    from collections import Counter

    h = outage_harness(tmp_path)
    before, after = Receiver(), Receiver()
    after.up = True

    async def go() -> None:
        _, task = await outage(h, before)
        before.up = True
        await wait_until(lambda: len(before.bodies) >= 3)  # draining blocks by now
        task.cancel()  # as a kill: the blocks (memory, files) are gone with the process
        with contextlib.suppress(asyncio.CancelledError):
            await task
        state = await h.db.read(store.load_state)
        restarted = make_forwarder(h, after, cache=EntryCache(),
                                   cursor=state.cursors[after.endpoint])
        restarted.begin_drain()
        await asyncio.wait_for(restarted.run(), 10)
        assert restarted.cursor == h.buffer.committed_upto
        await h.db.close()

    asyncio.run(go())
    sent = Counter(int(v) for client in (before, after)
                   for v in values_of(client.accepted, "device_temperature_celsius"))
    assert set(sent) == {int(f.sample_value(i, s)) for i in range(DEVICES)
                         for s in range(FRAMES)}  # nothing lost
    assert sum(c - 1 for c in sent.values()) <= 50  # at most one request sent twice
