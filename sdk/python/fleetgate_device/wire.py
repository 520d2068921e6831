"""Protocol v1 on the device side: topics and msgpack payloads (docs/protocol.md).

Its own encoder, on purpose: the gateway decodes with `device_protocol`, and an encoder shared
with the decoder would agree with it even where both misread the protocol."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import msgpack

PROTOCOL_VERSION = 1
_packer = msgpack.Packer(use_bin_type=True)  # floats as float64 (use_single_float=False)
# Metric declarations: [alias, name, type] or [alias, name, "histogram", bounds].
Declaration = list[Any]


class Topics(NamedTuple):
    birth: str
    telemetry: str
    death: str
    cmd: str
    gateway_state: str  # a wildcard over every gateway: {prefix}/_gateway/+/state


def topics(prefix: str, device_id: str) -> Topics:
    base = f"{prefix}/{device_id}"
    return Topics(f"{base}/birth", f"{base}/telemetry", f"{base}/death", f"{base}/cmd",
                  f"{prefix}/_gateway/+/state")


def pack(obj: object) -> bytes:
    return _packer.pack(obj)


def birth_payload(boot: int, time_ms: int, hw: str, fw: str, labels: Mapping[str, str],
                  interval_ms: int, metrics: Sequence[Declaration]) -> bytes:
    return _packer.pack({"v": PROTOCOL_VERSION, "b": boot, "t": time_ms, "hw": hw, "fw": fw,
                         "labels": labels, "interval": interval_ms, "metrics": metrics})


def telemetry_payload(boot: int, seq: int, time_ms: int, samples: Sequence[Any],
                      historical: bool = False) -> bytes:
    body: dict[str, Any] = {"v": PROTOCOL_VERSION, "b": boot, "s": seq, "t": time_ms,
                            "m": samples}
    if historical:
        body["h"] = True
    return _packer.pack(body)


def death_payload(boot: int) -> bytes:
    return _packer.pack({"v": PROTOCOL_VERSION, "b": boot})


def _read_map(payload: bytes) -> dict[Any, Any] | None:
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException):
        return None
    return obj if isinstance(obj, dict) else None


def is_rebirth(payload: bytes) -> bool:
    """A command asking for the birth again; unknown keys and unreadable payloads are not."""
    obj = _read_map(payload)
    return obj is not None and obj.get("rebirth") is True


def gateway_online(payload: bytes) -> bool | None:
    """The state a gateway announces (retained), or None when the payload says nothing."""
    obj = _read_map(payload)
    if obj is None:
        return None
    online = obj.get("online")
    return online if isinstance(online, bool) else None
