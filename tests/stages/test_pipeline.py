"""The pipeline on a real SQLite file, with the MQTT side faked: decode, dedup, hold, store, ack."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgpack
import pytest

import tests.support.factories as f
from device_protocol import decode_command
from gateway.buffer.db import Database
from gateway.errors import StoreError
from tests.support.pipeline_harness import Harness, birth_msg, msg, run, tele_msg


def test_frames_are_stored_then_acked_in_arrival_order(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    base = f.now_ms() - 60_000

    async def go() -> None:
        p = await h.open()
        batch = [birth_msg(1), *[tele_msg(1, s, base) for s in range(5)]]
        await p.handle(batch)
        assert h.mqtt.acked == batch
        assert h.rows("SELECT kind, seq FROM frames ORDER BY id") == [
            (1, None), (0, 0), (0, 1), (0, 2), (0, 3), (0, 4)]
        assert h.committed == [h.buffer.committed_upto]
        assert len(h.cache) == 6
        await h.db.close()

    run(go)


def test_duplicates_within_and_across_batches_and_restarts_are_dropped(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    base = f.now_ms() - 60_000

    async def go() -> None:
        p = await h.open()
        await p.handle([birth_msg(1), tele_msg(1, 0, base), tele_msg(1, 1, base),
                        tele_msg(1, 1, base)])
        await p.handle([tele_msg(1, 0, base), tele_msg(1, 2, base, historical=True)])
        await h.db.close()
        again = Harness(tmp_path / "db")
        p = await again.open()  # a restart: the ledger comes from SQLite
        await p.handle([tele_msg(1, 2, base), tele_msg(1, 3, base)])
        await again.db.close()

    run(go)
    assert h.rows("SELECT seq FROM frames WHERE kind = 0 ORDER BY id") == [(0,), (1,), (2,), (3,)]
    assert h.counter("fleetgate_frames_duplicate_total") == 2
    assert len(h.mqtt.acked) == 6  # duplicates are acked too: they are handled


def test_telemetry_before_birth_is_held_then_released_in_seq_order(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    base = f.now_ms() - 60_000

    async def go() -> None:
        p = await h.open()
        await p.handle([tele_msg(2, 1, base), tele_msg(2, 0, base)])
        assert h.rows("SELECT seq FROM held ORDER BY seq") == [(0,), (1,)]
        assert h.rows("SELECT COUNT(*) FROM frames") == [(0,)]
        # one rebirth request, not one per frame
        assert [t for t, _ in h.mqtt.published] == ["fleet/dev-0002/cmd"]
        assert decode_command(h.mqtt.published[0][1]).rebirth is True
        assert len(h.mqtt.acked) == 2  # held frames are durable: acked
        await h.db.close()
        again = Harness(tmp_path / "db")
        p = await again.open()  # held frames survive a restart
        await p.handle([tele_msg(2, 2, base), birth_msg(2)])
        await again.db.close()

    run(go)
    assert h.rows("SELECT COUNT(*) FROM held") == [(0,)]
    assert h.rows("SELECT kind, seq FROM frames ORDER BY id") == [
        (1, None), (0, 0), (0, 1), (0, 2)]


def test_bad_frames_are_quarantined_and_do_not_block_the_rest(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    base = f.now_ms() - 60_000
    oversized = msgpack.packb({"v": 1, "b": 1, "s": 0, "t": base, "m": [], "pad": "x" * 70_000})
    wrong_version = msgpack.packb({"v": 2, "b": 1, "s": 0, "t": base, "m": []})
    future = f.telemetry_payload(1, 9, base_ms=f.now_ms() + 86_400_000)

    async def go() -> None:
        p = await h.open()
        batch = [birth_msg(1), tele_msg(1, 0, base), msg("fleet/dev-0001/telemetry", b"\xc1"),
                 msg("fleet/dev-0001/telemetry", oversized),
                 msg("fleet/dev-0001/telemetry", wrong_version),
                 msg("fleet/bad id/telemetry", f.telemetry_payload(1, 5, base_ms=base)),
                 msg("fleet/dev-0001/telemetry", future), tele_msg(1, 1, base)]
        await p.handle(batch)
        assert h.mqtt.acked == batch
        await h.db.close()

    run(go)
    assert h.rows("SELECT seq FROM frames WHERE kind = 0 ORDER BY id") == [(0,), (1,)]
    quarantined = h.rows("SELECT topic, reason FROM quarantine ORDER BY id")
    assert len(quarantined) == 5
    total = sum(v for metric in h.metrics.registry.collect() if
                metric.name == "fleetgate_frames_invalid" for s in metric.samples
                if s.name.endswith("_total") for v in [s.value])
    assert total == 5


def test_failed_commit_is_retried_and_nothing_is_acked_before_it_lands(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    base = f.now_ms() - 60_000

    class FlakyDatabase(Database):
        failures = 2

        async def write(self, fn):  # type: ignore[no-untyped-def,override]
            if FlakyDatabase.failures:
                FlakyDatabase.failures -= 1
                assert h.mqtt.acked == []
                raise StoreError("database or disk is full", retryable=True)
            return await super().write(fn)

    async def go() -> None:
        p = await h.open(FlakyDatabase(tmp_path / "db", "normal"))
        batch = [birth_msg(1), tele_msg(1, 0, base), tele_msg(1, 1, base)]
        await p.handle(batch)
        assert FlakyDatabase.failures == 0
        assert h.mqtt.acked == batch
        assert h.counter("fleetgate_commit_errors_total") == 2
        await h.db.close()

    run(go)
    assert h.rows("SELECT COUNT(*) FROM frames") == [(3,)]


def test_drop_oldest_policy_counts_exactly_what_it_drops(tmp_path: Path) -> None:
    base = f.now_ms() - 60_000
    frame_size = len(f.telemetry_payload(1, 0, base_ms=base))
    h = Harness(tmp_path / "db", max_bytes=frame_size * 10 + 200, policy="drop_oldest")

    async def go() -> None:
        p = await h.open()
        await p.handle([birth_msg(1)])
        for seq in range(30):
            await p.handle([tele_msg(1, seq, base)])
        await h.db.close()

    run(go)
    kept = h.rows("SELECT COUNT(*) FROM frames")[0][0]
    dropped = h.rows("SELECT value FROM counters WHERE name = 'dropped_buffer_full'")[0][0]
    assert kept + dropped == 31
    assert dropped == h.counter("fleetgate_frames_dropped_total", "buffer_full")
    assert h.rows("SELECT MAX(seq) FROM frames")[0][0] == 29  # the newest are kept


def test_block_policy_waits_for_space(tmp_path: Path) -> None:
    base = f.now_ms() - 60_000
    h = Harness(tmp_path / "db", max_bytes=300, policy="block")

    async def go() -> None:
        p = await h.open()
        await p.handle([birth_msg(1)])
        blocked = asyncio.ensure_future(p.handle([tele_msg(1, s, base) for s in range(10)]))
        await asyncio.sleep(0)  # let it reach the wait; it must not complete on its own
        done, _ = await asyncio.wait([blocked], timeout=0.2)
        assert not done and len(h.mqtt.acked) == 1
        h.buffer.freed(1, h.buffer.bytes)  # the forwarder sent and deleted the birth
        await asyncio.wait_for(blocked, 5)
        assert len(h.mqtt.acked) == 11
        await h.db.close()

    run(go)


def test_rejected_alias_with_known_birth_is_quarantined(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    base = f.now_ms()
    bad = msgpack.packb({"v": 1, "b": f.boot_id(1), "s": 0, "t": base, "m": [[99, 1.0]]})

    async def go() -> None:
        p = await h.open()
        await p.handle([birth_msg(1), msg("fleet/dev-0001/telemetry", bad)])
        await h.db.close()

    run(go)
    assert h.rows("SELECT reason FROM quarantine") == [("unknown alias",)]
    assert h.rows("SELECT COUNT(*) FROM held") == [(0,)]


@pytest.mark.parametrize("seqs", [[0, 1, 2], [2, 0, 1]])
def test_ledger_row_matches_what_was_stored(tmp_path: Path, seqs: list[int]) -> None:
    h = Harness(tmp_path / "db")
    base = f.now_ms() - 60_000

    async def go() -> None:
        p = await h.open()
        await p.handle([birth_msg(1), *[tele_msg(1, s, base) for s in seqs]])
        await h.db.close()

    run(go)
    assert h.rows("SELECT ranges FROM ledger") == [("0-3",)]


def test_dropping_old_held_frames_releases_their_space(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    base = f.now_ms() - 60_000

    async def go() -> None:
        p = await h.open()
        await p.handle([tele_msg(4, 0, base), tele_msg(4, 1, base)])
        assert h.buffer.bytes > 0
        assert p.drop_held_before(f.now_ms() + 1) == 2
        assert h.buffer.bytes == 0 and p.held == {}
        assert h.metrics.registry.get_sample_value("fleetgate_frames_held") == 0
        await h.db.close()

    run(go)


def test_a_bad_held_frame_is_quarantined_and_the_others_are_released(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    base = f.now_ms() - 60_000
    unknown_alias = msgpack.packb({"v": 1, "b": f.boot_id(5), "s": 1, "t": base,
                                   "m": [[99, 1.0]]})

    async def go() -> None:
        p = await h.open()
        await p.handle([tele_msg(5, 0, base), msg("fleet/dev-0005/telemetry", unknown_alias),
                        tele_msg(5, 2, base)])
        assert h.rows("SELECT COUNT(*) FROM held") == [(3,)]
        await p.handle([birth_msg(5)])
        await h.db.close()

    run(go)
    assert h.rows("SELECT kind, seq FROM frames ORDER BY id") == [(1, None), (0, 0), (0, 2)]
    assert h.rows("SELECT reason FROM quarantine") == [("unknown alias",)]
    assert h.rows("SELECT COUNT(*) FROM held") == [(0,)]
