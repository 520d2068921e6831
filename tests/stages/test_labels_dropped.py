"""Labels sent with an empty value are dropped, their samples kept, and counted (issue 11, 12a)."""

from __future__ import annotations

from pathlib import Path

import msgpack

import tests.support.factories as f
from tests.support.pipeline_harness import Harness, msg, run


def test_empty_label_values_are_counted_once_per_stored_frame(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    birth = msgpack.packb({"v": 1, "b": f.boot_id(1), "t": f.now_ms(), "hw": "mcu", "fw": "1",
                           "labels": {"site": "lab", "rack": ""}, "interval": 1000,
                           "metrics": [[0, "temp_celsius", "gauge"]]})
    base = f.now_ms() - 10_000
    frame = msgpack.packb({"v": 1, "b": f.boot_id(1), "s": 0, "t": base,
                           "m": [[0, 21.5, 0, {"core": "", "mode": ""}], [0, 22.5]]})

    async def go() -> None:
        p = await h.open()
        await p.handle([msg("fleet/dev-0001/birth", birth), msg("fleet/dev-0001/telemetry", frame),
                        msg("fleet/dev-0001/telemetry", frame)])  # a redelivery: not again
        await h.db.close()

    run(go)
    assert h.rows("SELECT COUNT(*) FROM frames WHERE kind = 0") == [(1,)]
    assert h.counter("fleetgate_labels_dropped_total", "empty_value") == 3  # rack, core, mode
    assert h.counter("fleetgate_frames_invalid_total", "invalid label value") == 0
