"""Python heap of the gateway by tracemalloc, for bench/scale.py's memory phase.

Loaded by the interpreter at startup when this directory is on PYTHONPATH (the benchmark puts
it there for the measured gateway only) and BENCH_TRACEMALLOC_OUT names a file. tracemalloc then
traces every allocation (1 frame deep: the line that allocated). On SIGUSR1, after a full
collection, one JSON line is appended to that file: the traced bytes now and at peak, and the
bytes by source file of the largest holders. Tracing slows the gateway (CPU figures of a traced
run are not used); it does not change what the gateway keeps.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import tracemalloc
from types import FrameType

_OUT = os.environ.get("BENCH_TRACEMALLOC_OUT")
_TOP_FILES = 25


def _snapshot(signum: int, frame: FrameType | None) -> None:
    assert _OUT is not None
    gc.collect()
    current, peak = tracemalloc.get_traced_memory()
    stats = tracemalloc.take_snapshot().statistics("filename")
    by_file = {s.traceback[0].filename: s.size for s in stats[:_TOP_FILES]}
    with open(_OUT, "a") as f:
        f.write(json.dumps({"traced": current, "peak": peak, "by_file": by_file}) + "\n")


if _OUT:
    tracemalloc.start(1)
    signal.signal(signal.SIGUSR1, _snapshot)
