"""FileRing against a list, over random histories of push / take / done / reopen: after a
reopen the ring holds exactly the frames pushed and not yet acknowledged nor dropped, oldest
first (taken but unacknowledged frames come back), bounded by its size."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from fleetgate_device.file_ring import FileRing
from fleetgate_device.ring import Ringed

ops = st.lists(st.sampled_from(["push", "push", "take", "done", "reopen"]), max_size=40)


@settings(max_examples=60, deadline=None)
@given(ops, st.integers(1, 4))
def test_the_file_holds_what_the_model_holds(history: list[str], size: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ring"
        ring = FileRing(path, size)
        kept: list[Ringed] = []  # the model: not acknowledged, not dropped, oldest first
        taken: list[Ringed] = []
        seq = 0
        for op in history:
            if op == "push":
                frame = Ringed(1, seq, seq, b"p%d" % seq)
                seq += 1
                waiting = [f for f in kept if f not in taken]
                dropped = ring.push(frame)
                assert dropped == (1 if len(waiting) >= size else 0)
                if dropped:
                    kept.remove(waiting[0])
                kept.append(frame)
            elif op == "take":
                got = ring.take()
                waiting = [f for f in kept if f not in taken]
                assert got == (waiting[0] if waiting else None)
                if got is not None:
                    taken.append(got)
            elif op == "done" and taken:
                ring.done(taken[0])
                kept.remove(taken.pop(0))
            elif op == "reopen":
                ring.close()
                ring = FileRing(path, size)
                # Taken frames were never acknowledged: they come back, in file order.
                expected = sorted(kept, key=lambda f: f.seq)[-size:]
                kept, taken = expected, []
                assert [ring.take() for _ in range(len(ring))] == expected
                ring.close()
                ring = FileRing(path, size)
        ring.close()
