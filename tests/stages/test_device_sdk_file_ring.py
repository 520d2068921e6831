"""FileRing: frames survive a restart, a torn write loses at most that frame, and the frames of
a past boot are replayed under that boot, after its birth (decoded with device_protocol)."""

from __future__ import annotations

from pathlib import Path

import pytest

from device_protocol import decode_birth, decode_telemetry, resolve_telemetry
from fleetgate_device import DeviceCore, Sample
from fleetgate_device.file_ring import MAGIC, FileRing
from fleetgate_device.ring import Ringed

T0 = 1_790_000_000_000


def frame(seq: int, boot: int = 7) -> Ringed:
    return Ringed(boot, seq, T0 + seq, bytes([seq % 256]) * (seq % 5 + 1))


def filled(path: Path, n: int) -> list[int]:
    """The byte offset where each frame record starts."""
    ring = FileRing(path, 100)
    ring.remember_birth(7, b"birth-7")
    starts = []
    for i in range(n):
        starts.append(path.stat().st_size)
        ring.push(frame(i))
    ring.close()
    return starts


def test_frames_and_births_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "ring"
    filled(path, 5)
    ring = FileRing(path, 100)
    assert len(ring) == 5 and ring.birth(7) == b"birth-7"
    taken = [ring.take(), ring.take()]
    assert [f.seq for f in taken if f] == [0, 1]
    assert taken[0] == frame(0)
    assert taken[0] is not None
    ring.done(taken[0])  # acknowledged: gone after a restart; seq 1 was not: replayed again
    ring.close()
    again = FileRing(path, 100)
    assert [again.take() for _ in range(len(again))] == [frame(i) for i in (1, 2, 3, 4)]
    again.close()


def test_every_torn_tail_loses_only_the_last_frame(tmp_path: Path) -> None:
    path = tmp_path / "ring"
    starts = filled(path, 4)
    whole = path.read_bytes()
    for cut in range(starts[-1], len(whole)):
        path.write_bytes(whole[:cut])
        ring = FileRing(path, 100)
        assert [ring.take() for _ in range(len(ring))] == [frame(i) for i in range(3)], cut
        assert ring.birth(7) == b"birth-7"
        assert ring.truncated_bytes == cut - starts[-1]
        ring.push(frame(9))  # the file goes on from the cut
        ring.close()
        assert FileRing(path, 100).take() == frame(0)
        FileRing(path, 100).close()


@pytest.mark.parametrize("garbage", [b"\x00", b"\xff" * 7, b"\x00\x00\x00\x05\x00\x00\x00\x00"
                                     b"F1234", b"\x00\x00\x00\x01" + b"\x00" * 4 + b"Z"])
def test_garbage_at_the_end_is_cut_off(tmp_path: Path, garbage: bytes) -> None:
    path = tmp_path / "ring"
    filled(path, 3)
    size = path.stat().st_size
    with open(path, "ab") as f:
        f.write(garbage)
    ring = FileRing(path, 100)
    assert [ring.take() for _ in range(len(ring))] == [frame(i) for i in range(3)]
    assert path.stat().st_size == size
    ring.close()


def test_a_torn_header_starts_over_and_a_foreign_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ring"
    path.write_bytes(MAGIC[:3])
    FileRing(path, 10).close()
    assert path.read_bytes() == MAGIC
    other = tmp_path / "notes.txt"
    other.write_bytes(b"my notes, not a ring")
    with pytest.raises(ValueError, match="not a fleetgate ring"):
        FileRing(other, 10)
    assert other.read_bytes() == b"my notes, not a ring"


def test_bounded_oldest_dropped_and_the_file_compacts(tmp_path: Path) -> None:
    path = tmp_path / "ring"
    ring = FileRing(path, 3)
    assert sum(ring.push(frame(i)) for i in range(5)) == 2
    assert [f.seq for f in list(ring._waiting.values())] == [2, 3, 4]
    for i in range(5, 400):  # push, take, ack: the file must not grow without bound
        ring.push(frame(i))
        taken = ring.take()
        assert taken is not None
        ring.done(taken)
    assert len(ring) == 2  # each push dropped the oldest, each take took the next
    assert path.stat().st_size < 4000
    ring.close()
    reopened = FileRing(path, 3)
    assert [f.seq for f in reopened._waiting.values()] == [398, 399]
    with pytest.raises(ValueError, match="in use"):
        FileRing(path, 3)
    reopened.close()


def test_a_restarted_device_replays_the_old_boot_after_its_birth(tmp_path: Path) -> None:
    path = tmp_path / "ring"
    first = DeviceCore("pi-07", hw="h", fw="f", interval_ms=1000, ring=FileRing(path, 100))
    for i in range(3):
        first.telemetry(T0 + i, [Sample("temp", 20.0 + i)])  # offline: ringed
    old_boot = first.boot
    first.ring.close()  # the process ends

    second = DeviceCore("pi-07", hw="h", fw="f", interval_ms=1000, ring=FileRing(path, 100))
    assert second.boot != old_boot
    out = second.on_connect(T0 + 100)
    births = [decode_birth(p.payload) for p in out if p.topic.endswith("/birth")]
    assert [b.boot for b in births] == [second.boot, old_boot]
    frames = [decode_telemetry(p.payload) for p in out if p.frame]
    assert [(f.boot, f.seq, f.time_ms, f.historical) for f in frames] == [
        (old_boot, i, T0 + i, True) for i in range(3)]
    values = [getattr(s, "value", None) for f in frames
              for s in resolve_telemetry(f, births[1]).samples]
    assert values == [20.0, 21.0, 22.0]
