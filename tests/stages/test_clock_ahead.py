"""Devices whose clock runs ahead: measured at birth, corrected for every frame of that boot
(live, held or read back after a restart); a clock behind is left alone."""

from __future__ import annotations

from pathlib import Path

import tests.support.factories as f
from gateway.buffer import store
from gateway.pipeline.births import clock_ahead_ms
from gateway.pipeline.state import restore_state
from gateway.remote_write.wire import decode_write_request
from tests.support.pipeline_harness import Harness, birth_msg, run, tele_msg

DAY_MS = 86_400_000
TOLERANCE_MS = 300_000


def test_only_a_clock_ahead_beyond_the_tolerance_counts() -> None:
    assert clock_ahead_ms(1_000 + TOLERANCE_MS, 1_000, TOLERANCE_MS) == 0
    assert clock_ahead_ms(1_000 + TOLERANCE_MS + 1, 1_000, TOLERANCE_MS) == TOLERANCE_MS + 1
    assert clock_ahead_ms(1_000 + DAY_MS, 1_000, TOLERANCE_MS) == DAY_MS
    assert clock_ahead_ms(1_000 - DAY_MS, 1_000, TOLERANCE_MS) == 0  # behind: may be a delay


def temperature_timestamps(h: Harness, frame_ids: list[int]) -> list[int]:
    out = []
    for frame_id in frame_ids:
        entries = h.cache.get(frame_id)
        assert entries is not None
        for labels, samples in decode_write_request(b"".join(entries)):
            if labels["__name__"] == "device_temperature_celsius":
                out.extend(ts for _, ts in samples)
    return out


def telemetry_ids(h: Harness) -> list[int]:
    return [r[0] for r in h.rows("SELECT id FROM frames WHERE kind = 0 ORDER BY id")]


def test_a_boot_a_day_ahead_has_its_timestamps_moved_back_by_the_measured_offset(
        tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    now = f.now_ms()

    async def go() -> None:
        p = await h.open()
        # the device's clock: a day ahead; its frames are a few seconds old on that clock
        await p.handle([birth_msg(1, time_ms=now + DAY_MS),
                        *[tele_msg(1, s, now + DAY_MS - 10_000) for s in range(5)]])
        await h.db.close()

    run(go)
    stamps = temperature_timestamps(h, telemetry_ids(h))
    assert len(stamps) == 5
    # moved back by the offset measured at birth (a few ms of delivery delay under a day)
    assert all(abs(ts - (now - 10_000 + s * 1000)) < 2_000 for s, ts in enumerate(stamps))
    assert h.counter("fleetgate_frames_invalid_total") == 0


def test_frames_held_for_the_birth_are_corrected_when_it_comes(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    now = f.now_ms()

    async def go() -> None:
        p = await h.open()
        await p.handle([tele_msg(1, s, now + DAY_MS - 5_000) for s in range(3)])
        assert h.rows("SELECT COUNT(*) FROM held") == [(3,)]
        await p.handle([birth_msg(1, time_ms=now + DAY_MS)])
        await h.db.close()

    run(go)
    stamps = temperature_timestamps(h, telemetry_ids(h))
    assert len(stamps) == 3
    assert all(abs(ts - (now - 5_000 + s * 1000)) < 2_000 for s, ts in enumerate(stamps))


def test_future_frames_of_a_boot_with_a_true_clock_are_still_refused(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    now = f.now_ms()

    async def go() -> None:
        p = await h.open()
        await p.handle([birth_msg(1, time_ms=now), tele_msg(1, 0, now + DAY_MS),
                        # a day ahead, then another day ahead of that: too far even so
                        birth_msg(2, time_ms=now + DAY_MS), tele_msg(2, 0, now + 2 * DAY_MS)])
        await h.db.close()

    run(go)
    assert telemetry_ids(h) == []
    assert h.counter("fleetgate_frames_invalid_total", "timestamp in the future") == 2


def test_a_clock_behind_is_left_alone(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    now = f.now_ms()

    async def go() -> None:
        p = await h.open()
        await p.handle([birth_msg(1, time_ms=now - DAY_MS),
                        *[tele_msg(1, s, now - DAY_MS) for s in range(3)]])
        await h.db.close()

    run(go)
    assert temperature_timestamps(h, telemetry_ids(h)) == [now - DAY_MS + s * 1000
                                                           for s in range(3)]


def test_the_offset_survives_a_restart_for_frames_read_back_from_sqlite(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    now = f.now_ms()
    measured: list[int] = []

    async def go() -> None:
        p = await h.open()
        await p.handle([birth_msg(1, time_ms=now + DAY_MS)])
        measured.append(p.births.clock_ahead_ms(f.device_id(1), f.boot_id(1)))
        state = await h.db.read(store.load_state)
        restored = restore_state(state, 100, clock_tolerance_ms=TOLERANCE_MS)
        measured.append(restored.births.clock_ahead_ms(f.device_id(1), f.boot_id(1)))
        await h.db.close()

    run(go)
    assert measured[0] == measured[1]
    assert DAY_MS - 2_000 < measured[0] <= DAY_MS
