"""What the spec suite's tests share: standard device traffic and ways to read the receiver."""

from __future__ import annotations

import itertools
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from tests.spec.device_frames import (
    COUNTER,
    DEVICE,
    GAUGE,
    HISTOGRAM,
    SITE,
    Message,
    birth_msg,
    histogram,
    now_ms,
    tele_msg,
)
from tests.spec.gateway_rig import run_through
from tests.spec.rw_receiver import RecordingReceiver, Request
from tests.spec.rw_wire import Series
from tests.support.publisher import Publisher

Key = tuple[tuple[str, str], ...]  # a series' labels, sorted
STALE_WITHIN_S = 15.0  # the lifecycle acts within a second; a process start takes a few
# `fleetgate run` for the suite: stale markers within a second or two, no fleet metrics in the way.
GATEWAY_SETTINGS = {
    "remote_write_flush_ms": "0",
    "remote_write_retry_min_s": "0.05",
    "remote_write_retry_max_s": "0.5",
    "fleet_metrics_interval_s": "0",
    "sqlite_synchronous": "normal",
}


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


# ---------------------------------------------------------------------- staleness
def reported(receiver: RecordingReceiver, device: str = DEVICE) -> set[Key]:
    """The device's own series that reached the receiver with a real value."""
    return {key for key, s in receiver.accepted_samples()
            if dict(key).get("device_id") == device and not s.is_stale_marker
            and not dict(key)["__name__"].startswith("fleet_")}


def stale(receiver: RecordingReceiver, device: str = DEVICE) -> set[Key]:
    return {key for key, s in receiver.accepted_samples()
            if dict(key).get("device_id") == device and s.is_stale_marker}


def await_stale_markers(receiver: RecordingReceiver, expected: set[Key]) -> None:
    deadline = time.monotonic() + STALE_WITHIN_S
    while not expected <= stale(receiver) and time.monotonic() < deadline:
        time.sleep(0.02)
    missing = sorted(_show(k) for k in expected - stale(receiver))
    assert not missing, f"no stale marker for {len(missing)} of {len(expected)} series: {missing}"


def _show(key: Key) -> str:
    labels = dict(key)
    name = labels.pop("__name__")
    own = {k: v for k, v in labels.items() if k not in ("device_id", "site")}
    return f"{name}{own or ''}"


def every_kind_of_series(device: Publisher, receiver: RecordingReceiver, *,
                         interval_ms: int = 60_000) -> set[Key]:
    """A boot whose first frame reports a gauge, a counter, a histogram, a gauge with its own
    labels and an undeclared gauge; its next frame only the gauge. Returns the series.
    All of it a second in the past, so that whatever a test sends next comes after it."""
    t = now_ms() - 1_000
    device.publish([birth_msg(interval_ms=interval_ms, t_ms=t - 1_000),
                    tele_msg(0, [[GAUGE, 21.5], [COUNTER, 7],
                                 [HISTOGRAM, histogram(4, 0.3, [1, 2, 3])],
                                 [GAUGE, 30.0, 0, {"core": "1"}], ["fan_speed_rpm", 1200]],
                             t_ms=t)])
    device.publish([tele_msg(1, [[GAUGE, 22.0]], t_ms=t + 100)])
    receiver.wait_for(lambda rx: any(s.value == 22.0 for _, s in rx.accepted_samples()),
                      what="the boot's frames forwarded")
    series = reported(receiver)
    assert len(series) == 1 + 1 + 6 + 1 + 1, sorted(_show(k) for k in series)
    return series
