"""Each way a payload can be refused raises the right ProtocolError, with a usable reason."""

from __future__ import annotations

import math
import pickle
import struct
from typing import Any

import msgpack
import pytest

from device_protocol import (
    DEFAULT_LIMITS,
    FrameTooLarge,
    InvalidBirth,
    InvalidName,
    Limits,
    MalformedPayload,
    ProtocolError,
    SchemaError,
    TimestampOutOfRange,
    UnsupportedVersion,
    decode_birth,
    decode_command,
    decode_death,
    decode_gateway_state,
    decode_telemetry,
    names,
)
from tests.logic.protocol.protocol_payloads import T0, birth_map, pack, telemetry_map, without

DECODERS = [decode_birth, decode_telemetry, decode_death, decode_command, decode_gateway_state]


def raises(exc_type: type[ProtocolError], reason: str, payload: bytes, **kwargs: Any) -> str:
    with pytest.raises(exc_type) as caught:
        decode_telemetry(payload, **kwargs)
    assert caught.value.reason == reason, str(caught.value)
    return caught.value.detail


# --------------------------------------------------------------------------------- the error type


def test_error_str_is_reason_and_detail() -> None:
    error = SchemaError("seq out of range", "s = -1")
    assert str(error) == "seq out of range: s = -1"
    assert str(SchemaError("missing field")) == "missing field"


def test_errors_survive_pickling() -> None:
    error = pickle.loads(pickle.dumps(InvalidName("invalid metric name", "m[0]")))
    assert type(error) is InvalidName
    assert (error.reason, error.detail) == ("invalid metric name", "m[0]")


# ------------------------------------------------------------------------------ bytes and framing


def test_payload_over_the_size_limit() -> None:
    fits = pack(telemetry_map(m=[[0, 1.0]] * 5))
    limits = Limits(max_payload_bytes=len(fits))
    decode_telemetry(fits, limits=limits)
    too_big = fits + b"\x00"  # one byte more is refused before any parsing
    for decode in (decode_birth, decode_telemetry, decode_death):
        with pytest.raises(FrameTooLarge, match="frame too large"):
            decode(too_big, limits=limits)  # type: ignore[operator]


def test_default_size_limit_applies_to_commands_and_gateway_state() -> None:
    huge = pack({"rebirth": True, "pad": "x" * DEFAULT_LIMITS.max_payload_bytes})
    for decode in (decode_command, decode_gateway_state):
        with pytest.raises(FrameTooLarge):
            decode(huge)


NESTED = b"\x91" * 5000 + b"\x00"
MALFORMED = {
    "empty payload": b"",
    "not msgpack": b"\xc1garbage",
    "truncated": pack(telemetry_map())[:-3],
    "trailing data": pack(telemetry_map()) + b"\x00",
    "too deep": NESTED,
    "container too large": b"\x81\xa1m\xdd\xff\xff\xff\xff",
    "invalid utf-8": b"\x81\xa1v\xa2\xff\xfe",
    "unhashable map key": b"\x81\x81\x01\x02\x03",  # {{1: 2}: 3}
    "duplicate map key": b"\x82\xa1t\x01\xa1t\x02",  # {"t": 1, "t": 2}
    "not a map": pack([1, 2, 3]),
}


@pytest.mark.parametrize("reason", MALFORMED)
@pytest.mark.parametrize("decode", DECODERS, ids=lambda f: f.__name__)
def test_malformed_payloads(decode: Any, reason: str) -> None:
    with pytest.raises(MalformedPayload) as caught:
        decode(MALFORMED[reason])
    assert caught.value.reason == reason


def _with_repeated_key(payload: bytes, key: bytes, value: bytes) -> bytes:
    """A top-level map of n entries with one more entry appended: `key` written twice."""
    assert 0x80 <= payload[0] <= 0x8E
    return bytes((payload[0] + 1,)) + payload[1:] + key + value


def test_a_repeated_top_level_key_refuses_the_frame_whatever_the_values() -> None:
    # msgpack allows writing a key twice; decoders disagree on which value wins (msgpack-python
    # keeps the last, others the first), so the frame is refused rather than guessed at.
    telemetry = pack(telemetry_map())
    for value in (b"\x05", b"\x00"):  # s = 5 after s = 0, and the very same s = 0 again
        detail = raises(MalformedPayload, "duplicate map key", _with_repeated_key(
            telemetry, b"\xa1s", value))
        assert "'s'" in detail
    birth = pack(birth_map())
    with pytest.raises(MalformedPayload, match="duplicate map key"):
        decode_birth(_with_repeated_key(birth, b"\xa2fw", b"\xa13"))
    with pytest.raises(MalformedPayload, match="duplicate map key"):
        decode_death(b"\x83\xa1v\x01\xa1b\x01\xa1b\x02")


def test_a_repeated_label_name_refuses_the_frame() -> None:
    # {"core": "1", "core": "2"} inside a sample, and inside the birth's labels.
    labels = b"\x82\xa4core\xa11\xa4core\xa12"
    sample = b"\x94\xa8x_metric\x01\x00" + labels
    telemetry = b"\x85\xa1v\x01\xa1b\x07\xa1s\x00\xa1t\x00\xa1m\x91" + sample
    detail = raises(MalformedPayload, "duplicate map key", telemetry)
    assert "'core'" in detail
    birth = pack(birth_map(labels={"core": "1"}))
    assert birth.count(b"\x81\xa4core\xa11") == 1
    with pytest.raises(MalformedPayload, match="duplicate map key"):
        decode_birth(birth.replace(b"\x81\xa4core\xa11", labels))


def test_a_map_in_an_ignored_field_is_ignored_whole_repeated_keys_and_all() -> None:
    # Unknown keys are ignored: the codec reads nothing of them, so no value of theirs can be
    # picked wrongly. Every map it does read is checked (the frame, sample and birth labels).
    telemetry = pack(telemetry_map())
    extra = b"\xa5extra\x82\x01\x01\x01\x02"  # one more entry: "extra": {1: 1, 1: 2}
    decode_telemetry(bytes((telemetry[0] + 1,)) + telemetry[1:] + extra)


def test_huge_array_header_inside_the_frame_is_refused_before_allocation() -> None:
    # A map of 1 claiming a 4-billion-entry array: refused from the header alone.
    detail = raises(MalformedPayload, "container too large", b"\x81\xa1m\xdd\xff\xff\xff\xff")
    assert "4294967295" in detail


@pytest.mark.parametrize("top", [pack(None), pack(1), pack("text"), pack(b"bin"), pack([])])
def test_non_map_top_levels(top: bytes) -> None:
    raises(MalformedPayload, "not a map", top)


# ------------------------------------------------------------------------------- header fields


@pytest.mark.parametrize("version", [0, 2, "1", 1.0, True, None, [1]])
def test_unsupported_versions(version: object) -> None:
    for payload, decode in [
        (pack(telemetry_map(v=version)), decode_telemetry),
        (pack(birth_map(v=version)), decode_birth),
        (pack({"v": version, "b": 1}), decode_death),
    ]:
        with pytest.raises(UnsupportedVersion, match="unsupported version"):
            decode(payload)  # type: ignore[operator]


@pytest.mark.parametrize("key", ["v", "b", "s", "t", "m"])
def test_missing_telemetry_fields(key: str) -> None:
    detail = raises(SchemaError, "missing field", pack(without(telemetry_map(), key)))
    assert detail.startswith(f"{key} ")


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("b", -1, "boot out of range"),
        ("b", 2**32, "boot out of range"),
        ("b", True, "wrong type"),
        ("b", 1.0, "wrong type"),
        ("s", -1, "seq out of range"),
        ("s", 2**32, "seq out of range"),
        ("s", False, "wrong type"),
        ("s", "0", "wrong type"),
        ("t", -1, "time out of range"),
        ("t", 2**63, "time out of range"),
        ("t", float(T0), "wrong type"),
        ("h", 1, "wrong type"),
        ("h", None, "wrong type"),
        ("m", {}, "wrong type"),
        ("m", None, "wrong type"),
    ],
)
def test_bad_telemetry_header_fields(key: str, value: object, reason: str) -> None:
    raises(SchemaError, reason, pack(telemetry_map(**{key: value})))


def test_uint32_edges_are_accepted() -> None:
    raw = decode_telemetry(pack(telemetry_map(b=2**32 - 1, s=2**32 - 1)))
    assert (raw.boot, raw.seq) == (2**32 - 1, 2**32 - 1)


def test_unknown_and_non_string_keys_are_ignored() -> None:
    obj: dict[Any, Any] = telemetry_map(future_field=[1, {"x": None}], h=True)
    obj[1] = 2
    obj[b"v"] = 99
    obj[(1, 2)] = "tuple key"
    raw = decode_telemetry(msgpack.packb(obj, use_bin_type=True))
    assert raw.historical is True
    assert raw.samples[0].value == 21.5


# ------------------------------------------------------------------------------------- samples


def test_too_many_samples() -> None:
    limits = Limits(max_samples=3)
    decode_telemetry(pack(telemetry_map(m=[[0, 1.0]] * 3)), limits=limits)
    with pytest.raises(SchemaError, match="too many samples"):
        decode_telemetry(pack(telemetry_map(m=[[0, 1.0]] * 4)), limits=limits)


@pytest.mark.parametrize(
    ("sample", "reason"),
    [
        (5, "bad sample"),
        ([0], "bad sample"),
        ([0, 1.0, 0, {}, "extra"], "bad sample"),
        ([-1, 1.0], "alias out of range"),
        ([2**32, 1.0], "alias out of range"),
        ([1.5, 1.0], "bad metric"),
        ([True, 1.0], "bad metric"),
        ([None, 1.0], "bad metric"),
        ([0, "hot"], "bad value type"),
        ([0, True], "bad value type"),
        ([0, None], "bad value type"),
        ([0, b"\x01"], "bad value type"),
        ([0, {"v": 1}], "bad value type"),
        ([0, math.nan], "non-finite value"),
        ([0, math.inf], "non-finite value"),
        ([0, -math.inf], "non-finite value"),
        ([0, 1.0, 1.5], "wrong type"),
        ([0, 1.0, True], "wrong type"),
        ([0, 1.0, "5"], "wrong type"),
        ([0, 1.0, 0, []], "wrong type"),
        ([0, [1, 1.0]], "bad value type"),
        ([0, [-1, 1.0, []]], "histogram out of range"),
        ([0, [2, math.nan, []]], "non-finite value"),
        ([0, [2, 1.0, [1, 0]]], "histogram out of range"),
        ([0, [2, 1.0, [3]]], "histogram out of range"),
        ([0, [2, 1.0, [-1]]], "histogram out of range"),
        ([0, [2, 1.0, 5]], "wrong type"),
        ([0, [2, 1.0, ["1"]]], "bad value type"),
    ],
)
def test_bad_samples(sample: object, reason: str) -> None:
    detail = raises(SchemaError, reason, pack(telemetry_map(m=[[0, 1.0], sample])))
    assert detail.startswith("m[1] "), detail


def test_float32_nan_is_refused() -> None:
    nan32 = b"\xca" + struct.pack(">f", math.nan)
    payload = pack(telemetry_map(m=[])).replace(b"\xa1m\x90", b"\xa1m\x91\x92\x00" + nan32)
    raises(SchemaError, "non-finite value", payload)


def test_too_many_buckets() -> None:
    limits = Limits(max_buckets=2)
    payload = pack(telemetry_map(m=[[2, [3, 1.0, [1, 2, 3]]]]))
    with pytest.raises(SchemaError, match="too many buckets"):
        decode_telemetry(payload, limits=limits)


# --------------------------------------------------------------------------------- names, labels


@pytest.mark.parametrize("name", ["9lives", "has-dash", "", "sp ace", "ünï", "a\n"])
def test_bad_metric_names(name: str) -> None:
    raises(InvalidName, "invalid metric name", pack(telemetry_map(m=[[name, 1.0]])))


def test_metric_name_length_limit() -> None:
    decode_telemetry(pack(telemetry_map(m=[["a" * 200, 1.0]])))
    raises(InvalidName, "invalid metric name", pack(telemetry_map(m=[["a" * 201, 1.0]])))
    # Names already seen are cached; the length limit must still hold for a stricter Limits.
    with pytest.raises(InvalidName):
        decode_telemetry(pack(telemetry_map(m=[["a" * 200, 1.0]])), limits=Limits(max_name_len=100))


@pytest.mark.parametrize(
    ("labels", "reason"),
    [
        ({"1st": "x"}, "invalid label name"),
        ({"a-b": "x"}, "invalid label name"),
        ({"a:b": "x"}, "invalid label name"),
        ({"": "x"}, "invalid label name"),
        ({1: "x"}, "invalid label name"),
        ({"__name__": "x"}, "reserved label name"),
        ({"__anything": "x"}, "reserved label name"),
        ({"device_id": "other"}, "reserved label name"),
        ({"le": "0.5"}, "reserved label name"),
        ({"core": 1}, "invalid label value"),
        ({"core": None}, "invalid label value"),
        ({"core": "x" * 257}, "invalid label value"),
    ],
)
def test_bad_labels_in_samples_and_births(labels: dict[Any, Any], reason: str) -> None:
    raises(InvalidName, reason, pack(telemetry_map(m=[["x_metric", 1.0, 0, labels]])))
    with pytest.raises(InvalidName) as caught:
        decode_birth(pack(birth_map(labels=labels)))
    assert caught.value.reason == reason


def test_too_many_labels() -> None:
    labels = {f"l{i}": "v" for i in range(17)}
    raises(SchemaError, "too many labels", pack(telemetry_map(m=[["x_metric", 1.0, 0, labels]])))
    with pytest.raises(SchemaError, match="too many labels"):
        decode_birth(pack(birth_map(labels=labels)))


def test_labels_at_their_limits_are_accepted() -> None:
    labels = {f"l{i:02}": "v" * 256 for i in range(16)}
    raw = decode_telemetry(pack(telemetry_map(m=[["x_metric", 1.0, 0, labels]])))
    assert raw.samples[0].labels == tuple(sorted(labels.items()))


# ---------------------------------------------------------------------------------- timestamps


def test_future_samples_are_refused_only_with_a_clock() -> None:
    skew = DEFAULT_LIMITS.max_future_skew_ms
    now = T0 - skew
    at_limit = pack(telemetry_map(m=[[0, 1.0]]))
    decode_telemetry(at_limit, now_ms=now)
    ahead = pack(telemetry_map(m=[[0, 1.0], [0, 1.0, 1]]))
    detail = raises(TimestampOutOfRange, "timestamp in the future", ahead, now_ms=now)
    assert detail.startswith("m[1] ")
    raises(TimestampOutOfRange, "timestamp in the future", at_limit, now_ms=now - 1)
    assert len(decode_telemetry(ahead).samples) == 2


def test_negative_sample_times_are_refused() -> None:
    raises(TimestampOutOfRange, "negative timestamp", pack(telemetry_map(m=[[0, 1.0, -T0 - 1]])))
    raw = decode_telemetry(pack(telemetry_map(m=[[0, 1.0, -T0]])))
    assert raw.samples[0].dt_ms == -T0


def test_birth_from_the_future_is_refused_with_a_clock() -> None:
    payload = pack(birth_map())
    decode_birth(payload, now_ms=T0)
    with pytest.raises(TimestampOutOfRange):
        decode_birth(payload, now_ms=T0 - DEFAULT_LIMITS.max_future_skew_ms - 1)


# ---------------------------------------------------------------------------------------- birth


@pytest.mark.parametrize("key", ["v", "b", "t", "hw", "fw", "interval", "metrics"])
def test_missing_birth_fields(key: str) -> None:
    with pytest.raises(SchemaError, match="missing field"):
        decode_birth(pack(without(birth_map(), key)))


def test_birth_labels_are_optional() -> None:
    assert decode_birth(pack(without(birth_map(), "labels"))).labels == ()


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"interval": 0}, "interval out of range"),
        ({"interval": -5}, "interval out of range"),
        ({"interval": True}, "wrong type"),
        ({"interval": 1.5}, "wrong type"),
        ({"hw": ""}, "platform out of range"),
        ({"hw": "x" * 257}, "platform out of range"),
        ({"fw": 2}, "wrong type"),
        ({"labels": ["site", "x"]}, "wrong type"),
        ({"metrics": {"0": "x"}}, "wrong type"),
        ({"metrics": [[0, "a"]]}, "bad metric declaration"),
        ({"metrics": [5]}, "bad metric declaration"),
        ({"metrics": [[0, "a", "gauge", [], 1]]}, "bad metric declaration"),
        ({"metrics": [["0", "a", "gauge"]]}, "wrong type"),
        ({"metrics": [[-1, "a", "gauge"]]}, "alias out of range"),
        ({"metrics": [[0, 5, "gauge"]]}, "wrong type"),
        ({"metrics": [[0, "h", "histogram", 0.5]]}, "wrong type"),
        ({"metrics": [[0, "h", "histogram", ["0.5"]]]}, "wrong type"),
    ],
)
def test_bad_birth_fields(overrides: dict[str, Any], reason: str) -> None:
    with pytest.raises(SchemaError) as caught:
        decode_birth(pack(birth_map(**overrides)))
    assert caught.value.reason == reason


def test_too_many_metrics() -> None:
    metrics = [[i, f"m{i}", "gauge"] for i in range(4)]
    decode_birth(pack(birth_map(metrics=metrics[:3])), limits=Limits(max_metrics=3))
    with pytest.raises(SchemaError, match="too many metrics"):
        decode_birth(pack(birth_map(metrics=metrics)), limits=Limits(max_metrics=3))


@pytest.mark.parametrize(
    ("metrics", "reason"),
    [
        ([[0, "a", "gauge"], [0, "b", "gauge"]], "duplicate alias"),
        ([[0, "a", "gauge"], [1, "a", "counter"]], "duplicate metric name"),
        ([[0, "a", "summary"]], "unknown metric type"),
        ([[0, "a", 1]], "unknown metric type"),
        ([[0, "a", "gauge", [1.0]]], "unexpected bounds"),
        ([[0, "h", "histogram"]], "missing bounds"),
        ([[0, "h", "histogram", [1.0, 0.1]]], "bounds not increasing"),
        ([[0, "h", "histogram", [0.1, 0.1]]], "bounds not increasing"),
        ([[0, "h", "histogram", [0.1, math.inf]]], "bound not finite"),
        ([[0, "h", "histogram", [math.nan]]], "bound not finite"),
    ],
)
def test_invalid_births(metrics: list[Any], reason: str) -> None:
    with pytest.raises(InvalidBirth) as caught:
        decode_birth(pack(birth_map(metrics=metrics)))
    assert caught.value.reason == reason


def test_bad_metric_name_in_birth() -> None:
    with pytest.raises(InvalidName, match="metrics\\[0\\] name"):
        decode_birth(pack(birth_map(metrics=[[0, "bad-name", "gauge"]])))


# -------------------------------------------------------------------------- death, cmd, gateway


def test_death() -> None:
    assert decode_death(pack({"v": 1, "b": 9, "extra": 1})).boot == 9
    with pytest.raises(SchemaError, match="missing field"):
        decode_death(pack({"v": 1}))
    with pytest.raises(SchemaError, match="boot out of range"):
        decode_death(pack({"v": 1, "b": -1}))


def test_command() -> None:
    assert decode_command(pack({"rebirth": True})).rebirth is True
    assert decode_command(pack({"rebirth": False, "other": 1})).rebirth is False
    assert decode_command(pack({})).rebirth is False
    with pytest.raises(SchemaError, match="wrong type"):
        decode_command(pack({"rebirth": 1}))


def test_gateway_state() -> None:
    state = decode_gateway_state(pack({"online": True, "t": T0}))
    assert (state.online, state.time_ms) == (True, T0)
    with pytest.raises(SchemaError, match="missing field"):
        decode_gateway_state(pack({"t": T0}))
    with pytest.raises(SchemaError, match="wrong type"):
        decode_gateway_state(pack({"online": "yes", "t": T0}))
    with pytest.raises(SchemaError, match="time out of range"):
        decode_gateway_state(pack({"online": False, "t": -1}))


def test_name_caches_stay_bounded() -> None:
    # A device inventing names must not grow the validation caches without limit.
    for i in range(10_050):
        names.check_metric_name(f"m_{i}", DEFAULT_LIMITS, "metric")
        names.check_label_name(f"l_{i}", DEFAULT_LIMITS, "label")
    assert 0 < len(names._metric_names_ok) <= 10_000
    assert 0 < len(names._label_names_ok) <= 10_000
