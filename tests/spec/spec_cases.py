"""What the spec suite's tests share: standard device traffic and ways to read the receiver."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from device_frames import (
    COUNTER,
    DEVICE,
    GAUGE,
    HISTOGRAM,
    SITE,
    Message,
    birth_msg,
    histogram,
    tele_msg,
)
from gateway_rig import run_through
from rw_receiver import RecordingReceiver, Request
from rw_wire import Series

Key = tuple[tuple[str, str], ...]  # a series' labels, sorted


def a_device_reporting(t_ms: int) -> list[list[Message]]:
    """A birth, then one frame with a gauge, a counter, a histogram and a labelled sample."""
    return [[birth_msg()],
            [tele_msg(0, [[GAUGE, 21.5], [COUNTER, 7], [HISTOGRAM, histogram(4, 0.3, [1, 2, 3])],
                          ["fan_speed_rpm", 1200, 0, {"core": "1"}]], t_ms=t_ms)]]


def frames(count: int, *, t_ms: int, first_seq: int = 0) -> list[list[Message]]:
    """`count` frames of 8 samples each (gauge, counter, a histogram of 3 bounds), 1 s apart."""
    return [[tele_msg(seq, [[GAUGE, 20.0 + seq], [COUNTER, seq],
                            [HISTOGRAM, histogram(seq, 0.1, [0, 0, seq])]],
                      t_ms=t_ms + seq * 1000)] for seq in range(first_seq, first_seq + count)]


def sent(tmp_path: Path, receiver: RecordingReceiver, *groups: list[Message],
         **forward: Any) -> list[Request]:
    """Run the groups through the gateway; the requests that carried samples."""
    run_through(tmp_path / "buffer.db", receiver.url, *groups, **forward)
    requests = receiver.with_samples()
    assert requests, "nothing reached the receiver"
    return requests


def all_series(requests: list[Request]) -> list[Series]:
    return [s for r in requests for s in r.series]


def sample_set(requests: list[Request]) -> Counter[tuple[Any, ...]]:
    return Counter((key, s.timestamp_ms, s.bits) for r in requests for key, s in r.samples())


def intervals(requests: list[Request]) -> list[float]:
    return [b.at - a.at for a, b in itertools.pairwise(requests)]


def order_violations(requests: list[Request]) -> list[str]:
    """Series whose samples go back in time within one request."""
    bad = []
    for r in requests:
        per_series: dict[Key, list[int]] = defaultdict(list)
        for key, sample in r.samples():
            per_series[key].append(sample.timestamp_ms)
        bad += [f"request #{r.index}: {dict(key)['__name__']} {stamps}"
                for key, stamps in per_series.items() if stamps != sorted(stamps)]
    return bad


def device_key(name: str, device: str = DEVICE, **labels: str) -> Key:
    """The labels protocol.md says a sample of the standard device gets."""
    return tuple(sorted({"__name__": name, "device_id": device, **SITE, **labels}.items()))
