"""The seq rule (issue 11, findings 1 and 2): a (device, boot, seq) is marked seen only when that
frame's samples are committed for forwarding. A frame quarantined at any stage - decode, schema,
unknown alias, clock - leaves its seq free, so the same seq sent again, valid, is stored; and
every figure that says "received" agrees: the completeness ledger, the fleet's per-device
counter and the frames stored.

Payloads are built by hand from docs/protocol.md with msgpack, not with our own encoder."""

from __future__ import annotations

from pathlib import Path

import msgpack

import tests.support.factories as f
from gateway.fleet import completeness
from tests.support.pipeline_harness import Harness, birth_msg, msg, run

DEVICE = f.device_id(1)
TOPIC = f"fleet/{DEVICE}/telemetry"


def frame(seq: int, t: int, samples: list[list[object]], **extra: object) -> bytes:
    """A telemetry frame as a firmware author writes it: short keys, aliases from the birth."""
    return msgpack.packb({"v": 1, "b": f.boot_id(1), "s": seq, "t": t, "m": samples, **extra})


def stored_seqs(h: Harness) -> list[int]:
    return [row[0] for row in h.rows("SELECT seq FROM frames WHERE kind = 0 ORDER BY id")]


def received_figures(h: Harness) -> tuple[int, int, int]:
    """(completeness received, fleet frames received, frames stored) of the device."""
    record = h.pipeline._fleet.devices[DEVICE]
    ledger_view = completeness.of_device(record, h.pipeline.ledger)
    return ledger_view.received, record.frames, len(stored_seqs(h))


def test_a_frame_quarantined_as_unknown_alias_leaves_its_seq_free(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    base = f.now_ms() - 60_000

    async def go() -> None:
        p = await h.open()
        await p.handle([birth_msg(1), msg(TOPIC, frame(0, base, [[0, 21.5]]))])
        await p.handle([msg(TOPIC, frame(1, base + 1000, [[0, 22.0], [9, 1.0]]))])  # alias 9?
        assert h.rows("SELECT reason FROM quarantine") == [("unknown alias",)]
        await p.handle([msg(TOPIC, frame(1, base + 1000, [[0, 22.0]]))])  # the same seq, valid
        await h.db.close()

    run(go)
    assert stored_seqs(h) == [0, 1]
    assert h.counter("fleetgate_frames_duplicate_total") == 0


def test_every_quarantine_stage_leaves_the_seq_free(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    base = f.now_ms() - 60_000
    bad_frames = [
        frame(1, base, [[0, "hot"]]),  # wrong value type
        frame(1, base, [[0, float("nan")]]),  # non-finite value
        frame(1, base, [[7, 1.0]]),  # unknown alias
        frame(1, f.now_ms() + 86_400_000, [[0, 1.0]]),  # a day in the future
        frame(1, base, [[0, 1.0]])[:-3],  # truncated
        msgpack.packb({"v": 9, "b": f.boot_id(1), "s": 1, "t": base, "m": [[0, 1.0]]}),
    ]

    async def go() -> None:
        p = await h.open()
        await p.handle([birth_msg(1), msg(TOPIC, frame(0, base - 1000, [[0, 1.0]]))])
        await p.handle([msg(TOPIC, bad) for bad in bad_frames])
        assert len(h.rows("SELECT id FROM quarantine")) == len(bad_frames)
        await p.handle([msg(TOPIC, frame(1, base, [[0, 2.0]]))])
        await h.db.close()

    run(go)
    assert stored_seqs(h) == [0, 1]


def test_a_held_frame_quarantined_at_its_release_leaves_its_seq_free(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    base = f.now_ms() - 60_000

    async def go() -> None:
        p = await h.open()
        # Before the birth: held. At the birth: alias 9 is not declared, so quarantined.
        await p.handle([msg(TOPIC, frame(0, base, [[9, 1.0]]))])
        await p.handle([birth_msg(1)])
        assert h.rows("SELECT reason FROM quarantine") == [("unknown alias",)]
        await p.handle([msg(TOPIC, frame(0, base, [[0, 1.0]]))])
        await h.db.close()

    run(go)
    assert stored_seqs(h) == [0]


def test_a_held_frame_sent_twice_is_held_once(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    base = f.now_ms() - 60_000

    async def go() -> None:
        p = await h.open()
        await p.handle([msg(TOPIC, frame(0, base, [[0, 1.0]])),
                        msg(TOPIC, frame(0, base, [[0, 1.0]]))])
        await p.handle([msg(TOPIC, frame(0, base, [[0, 1.0]]))])
        assert h.rows("SELECT seq FROM held") == [(0,)]
        await h.db.close()
        again = Harness(tmp_path / "db")
        p = await again.open()  # the held set survives a restart
        await p.handle([msg(TOPIC, frame(0, base, [[0, 1.0]])), birth_msg(1)])
        await again.db.close()

    run(go)
    assert stored_seqs(h) == [0]
    assert h.counter("fleetgate_frames_duplicate_total") == 2


def test_received_agrees_everywhere_after_quarantines(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    base = f.now_ms() - 60_000

    async def go() -> None:
        p = await h.open()
        await p.handle([birth_msg(1)])
        batch = []
        for seq in range(200):
            samples: list[list[object]] = [[0, float(seq)]]
            if seq == 150:
                samples.append([9, 1.0])  # quarantined: never sent again
            batch.append(msg(TOPIC, frame(seq, base + seq, samples)))
        await p.handle(batch)
        assert received_figures(h) == (199, 199, 199)
        record = p._fleet.devices[DEVICE]
        assert record.quarantined == 1
        # The gap the quarantined frame leaves is missing, not received.
        assert completeness.of_device(record, p.ledger).missing == 1
        await h.db.close()

    run(go)
