"""Valid protocol-v1 payloads for the protocol tests, to be broken one field at a time."""

from __future__ import annotations

from typing import Any

import msgpack

T0 = 1_790_000_000_000
BOOT = 7


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def birth_map(**overrides: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "v": 1,
        "b": BOOT,
        "t": T0,
        "hw": "esp32-s3",
        "fw": "2.1.0",
        "labels": {"site": "lab-7"},
        "interval": 10_000,
        "metrics": [
            [0, "temp_celsius", "gauge"],
            [1, "inferences_total", "counter"],
            [2, "latency_seconds", "histogram", [0.01, 0.1, 1.0]],
        ],
    }
    obj.update(overrides)
    return obj


def telemetry_map(**overrides: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {"v": 1, "b": BOOT, "s": 0, "t": T0, "m": [[0, 21.5]]}
    obj.update(overrides)
    return obj


def without(obj: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != key}
