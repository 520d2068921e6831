"""Metric names the gateway writes per device itself (fleet_device_*, fleet_devices) are refused
from devices, declared in a birth or sent undeclared (found by the spec suite: a device's
`fleet_device_up` wrote into the gateway's own series). Hand-built msgpack."""

from __future__ import annotations

import msgpack
import pytest

from device_protocol import InvalidName, decode_birth, decode_telemetry

T = 1_790_000_000_000


@pytest.mark.parametrize("name", ["fleet_device_up", "fleet_devices", "fleet_device_info"])
def test_an_undeclared_sample_named_like_a_gateway_family_is_refused(name: str) -> None:
    payload = msgpack.packb({"v": 1, "b": 1, "s": 0, "t": T, "m": [[name, 1.0]]})
    with pytest.raises(InvalidName) as refused:
        decode_telemetry(payload)
    assert refused.value.reason == "reserved metric name"


def test_a_birth_declaring_a_gateway_family_is_refused() -> None:
    payload = msgpack.packb({"v": 1, "b": 1, "t": T, "hw": "esp32", "fw": "1", "labels": {},
                             "interval": 1000, "metrics": [[0, "fleet_device_up", "gauge"]]})
    with pytest.raises(InvalidName) as refused:
        decode_birth(payload)
    assert refused.value.reason == "reserved metric name"


def test_names_that_only_start_alike_are_fine() -> None:
    payload = msgpack.packb({"v": 1, "b": 1, "s": 0, "t": T, "m": [["fleet_size", 3]]})
    assert decode_telemetry(payload).samples[0].metric == "fleet_size"
