"""Time spent in Python's garbage collector, for bench/throughput.py --profile.

Loaded by the interpreter at startup when this directory is on PYTHONPATH (the benchmark puts
it there for the profiled gateway only) and BENCH_GCSTATS_OUT names a file. Every collection is
then timed through gc.callbacks; on SIGUSR1 the totals so far are appended to that file as one
JSON line, so the benchmark can take the difference over its workload. A Python-level sampler
such as py-spy cannot see this time: it lands on whichever line allocated the object that
triggered the collection. Nothing here changes how the collector behaves.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import time
from types import FrameType
from typing import Any

_OUT = os.environ.get("BENCH_GCSTATS_OUT")
_seconds = [0.0, 0.0, 0.0]
_collections = [0, 0, 0]
_started = [0.0]


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
        return
    generation = info["generation"]
    _seconds[generation] += time.perf_counter() - _started[0]
    _collections[generation] += 1


def _snapshot(signum: int, frame: FrameType | None) -> None:
    assert _OUT is not None
    with open(_OUT, "a") as f:
        f.write(json.dumps({"seconds": _seconds, "collections": _collections,
                            "threshold": gc.get_threshold()}) + "\n")


if _OUT:
    gc.callbacks.append(_on_gc)
    signal.signal(signal.SIGUSR1, _snapshot)
