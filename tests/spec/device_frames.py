"""Device frames built by hand with msgpack from docs/protocol.md, as a firmware author would.

Nothing here comes from `device_protocol`: keys, types and layouts are the ones the protocol
document's tables give (checked against the vectors in tests/data/protocol-v1.json by
test_hand_built_frames_match_the_protocol_vectors), so the gateway meets bytes it did not make.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import msgpack

PREFIX = "fleet"
GAUGE, COUNTER, HISTOGRAM = 0, 1, 2  # the aliases of STANDARD_METRICS
BOUNDS = (0.005, 0.05, 0.5)
STANDARD_METRICS: tuple[list[Any], ...] = (
    [GAUGE, "device_temperature_celsius", "gauge"],
    [COUNTER, "inference_total", "counter"],
    [HISTOGRAM, "inference_duration_seconds", "histogram", list(BOUNDS)],
)


def now_ms() -> int:
    return int(time.time() * 1000)


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def topic(device_id: str, kind: str) -> str:
    return f"{PREFIX}/{device_id}/{kind}"


def birth(boot: int, *, t_ms: int | None = None, labels: dict[str, str] | None = None,
          interval_ms: int = 60_000, metrics: Sequence[list[Any]] = STANDARD_METRICS,
          hw: str = "esp32-s3", fw: str = "2.1.0") -> bytes:
    return pack({"v": 1, "b": boot, "t": t_ms if t_ms is not None else now_ms(), "hw": hw,
                 "fw": fw, "labels": labels if labels is not None else {"site": "lab-7"},
                 "interval": interval_ms, "metrics": [list(m) for m in metrics]})


def telemetry(boot: int, seq: int, samples: Sequence[list[Any]], *, t_ms: int | None = None,
              historical: bool | None = None) -> bytes:
    frame: dict[str, Any] = {"v": 1, "b": boot, "s": seq,
                             "t": t_ms if t_ms is not None else now_ms(),
                             "m": [list(s) for s in samples]}
    if historical is not None:
        frame["h"] = historical
    return pack(frame)


def death(boot: int) -> bytes:
    return pack({"v": 1, "b": boot})


def histogram(count: int, total: float, cumulative: Sequence[int]) -> list[Any]:
    """A histogram sample's value: [count, sum, [cumulative count per declared bound]]."""
    return [count, total, list(cumulative)]


# ---------------------------------------------------------------------- one device's messages
DEVICE = "spec-dev-01"
BOOT = 0x5EC00001
SITE = {"site": "lab-7"}  # the birth labels of STANDARD_METRICS' device

Message = tuple[str, bytes]


def birth_msg(*, device: str = DEVICE, boot: int = BOOT, **kwargs: Any) -> Message:
    return topic(device, "birth"), birth(boot, **kwargs)


def tele_msg(seq: int, samples: Sequence[list[Any]], *, device: str = DEVICE, boot: int = BOOT,
             **kwargs: Any) -> Message:
    return topic(device, "telemetry"), telemetry(boot, seq, samples, **kwargs)


def death_msg(*, device: str = DEVICE, boot: int = BOOT) -> Message:
    return topic(device, "death"), death(boot)


def telemetry_with_raw_sample(boot: int, seq: int, sample: bytes, *, t_ms: int) -> bytes:
    """A telemetry frame whose one sample is given as raw msgpack bytes (e.g. a labels map
    that repeats a key, which no dict can hold)."""
    packer = msgpack.Packer(use_bin_type=True)
    head = b"".join(packer.pack(x) for x in ("v", 1, "b", boot, "s", seq, "t", t_ms, "m"))
    return packer.pack_map_header(5) + head + packer.pack_array_header(1) + sample


def repeated_key_map(*pairs: tuple[str, str]) -> bytes:
    """A msgpack map of these pairs, repeats included."""
    packer = msgpack.Packer(use_bin_type=True)
    return packer.pack_map_header(len(pairs)) + b"".join(
        packer.pack(k) + packer.pack(v) for k, v in pairs)
