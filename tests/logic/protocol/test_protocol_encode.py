"""Encoders emit the shortest form the decoders accept, with float64 values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import msgpack

from device_protocol import (
    Birth,
    Command,
    Death,
    GatewayState,
    HistogramValue,
    MetricDef,
    MetricType,
    RawSample,
    RawTelemetry,
    decode_birth,
    decode_command,
    decode_death,
    decode_gateway_state,
    decode_telemetry,
    encode_birth,
    encode_command,
    encode_death,
    encode_gateway_state,
    encode_telemetry,
)

T0 = 1_790_000_000_000


def wire(payload: bytes) -> object:
    return msgpack.unpackb(payload, strict_map_key=False)


def test_telemetry_shortest_forms() -> None:
    raw = RawTelemetry(
        boot=3,
        seq=9,
        time_ms=T0,
        samples=(
            RawSample(0, 1.5, 0, ()),
            RawSample(1, 2.5, -20, ()),
            RawSample("named_metric", 3.5, 0, (("core", "1"),)),
            RawSample(2, HistogramValue(4.0, 0.5, (1.0, 3.0)), 0, ()),
        ),
        historical=False,
    )
    assert wire(encode_telemetry(raw)) == {
        "v": 1,
        "b": 3,
        "s": 9,
        "t": T0,
        "m": [
            [0, 1.5],
            [1, 2.5, -20],
            ["named_metric", 3.5, 0, {"core": "1"}],
            [2, [4, 0.5, [1, 3]]],
        ],
    }
    assert decode_telemetry(encode_telemetry(raw)) == raw


def test_historical_flag_only_when_true() -> None:
    raw = RawTelemetry(3, 9, T0, (), historical=True)
    assert wire(encode_telemetry(raw))["h"] is True  # type: ignore[index]
    assert decode_telemetry(encode_telemetry(raw)).historical is True


def test_floats_are_float64() -> None:
    payload = encode_telemetry(RawTelemetry(3, 9, T0, (RawSample(0, 0.1, 0, ()),), False))
    assert b"\xcb\x3f\xb9\x99\x99\x99\x99\x99\x9a" in payload
    assert b"\xca" not in payload
    assert decode_telemetry(payload).samples[0].value == 0.1


def test_fractional_histogram_counts_stay_floats() -> None:
    value = HistogramValue(2.5, 1.0, (0.5,))
    raw = RawTelemetry(3, 9, T0, (RawSample(2, value, 0, ()),), False)
    assert wire(encode_telemetry(raw))["m"] == [[2, [2.5, 1.0, [0.5]]]]  # type: ignore[index]


def test_birth_round_trip_and_optional_labels() -> None:
    birth = Birth(
        boot=2**32 - 1,
        time_ms=T0,
        platform="rp2040",
        firmware="0.9.1-rc1",
        labels=(),
        interval_ms=5000,
        metrics=(
            MetricDef(0, "temp_celsius", MetricType.GAUGE),
            MetricDef(7, "lat_seconds", MetricType.HISTOGRAM, (0.5, 1.0, 2.5)),
        ),
    )
    obj = wire(encode_birth(birth))
    assert "labels" not in obj  # type: ignore[operator]
    assert obj["metrics"] == [  # type: ignore[index]
        [0, "temp_celsius", "gauge"],
        [7, "lat_seconds", "histogram", [0.5, 1.0, 2.5]],
    ]
    assert decode_birth(encode_birth(birth)) == birth
    labelled = Birth(1, T0, "x", "y", (("a", "1"), ("b", "2")), 1, ())
    assert wire(encode_birth(labelled))["labels"] == {"a": "1", "b": "2"}  # type: ignore[index]
    assert decode_birth(encode_birth(labelled)) == labelled


def test_vector_birth_survives_re_encoding() -> None:
    vectors = json.loads((Path(__file__).parents[2] / "data" / "protocol-v1.json").read_text())
    case = next(c for c in vectors["cases"] if c["name"] == "birth-basic")
    birth = decode_birth(bytes.fromhex(case["payload_hex"]))
    assert decode_birth(encode_birth(birth)) == birth


def test_small_frames_round_trip() -> None:
    assert wire(encode_death(Death(5))) == {"v": 1, "b": 5}
    assert decode_death(encode_death(Death(5))) == Death(5)
    assert wire(encode_command(Command(rebirth=True))) == {"rebirth": True}
    assert decode_command(encode_command(Command(rebirth=True))) == Command(rebirth=True)
    assert decode_command(encode_command(Command())) == Command()
    state = GatewayState(online=False, time_ms=T0)
    assert wire(encode_gateway_state(state)) == {"online": False, "t": T0}
    assert decode_gateway_state(encode_gateway_state(state)) == state


def test_extreme_finite_values_round_trip() -> None:
    values = (math.ulp(0.0), -1.7976931348623157e308, 2.0**64, -0.0)
    raw = RawTelemetry(0, 0, 0, tuple(RawSample(i, v, 0, ()) for i, v in enumerate(values)), False)
    assert decode_telemetry(encode_telemetry(raw)) == raw
