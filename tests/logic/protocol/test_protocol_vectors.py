"""The shared protocol-v1 vectors: payloads from independent firmware encoders.

Cases run in file order: a telemetry case is resolved against the latest birth case before it.
The vectors list a sample's labels as the device sent them; the resolved sample carries the
birth labels overlaid by those (the gateway's contract), so both are checked.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from device_protocol import (
    Birth,
    Death,
    FrameKind,
    HistogramSample,
    ProtocolError,
    RawTelemetry,
    Sample,
    Telemetry,
    decode_birth,
    decode_death,
    decode_telemetry,
    parse_topic,
    resolve_telemetry,
)

VECTORS = json.loads((Path(__file__).parents[2] / "data" / "protocol-v1.json").read_text())
CASES: list[dict[str, Any]] = VECTORS["cases"]
PREFIX = "fleet"
DEVICE_ID = "dev-01"
# Just after the newest time in the vectors: future-skew checks are live but pass.
NOW_MS = 1_790_000_000_000 + 60_000

CHECKED_KEYS = {
    "ok",
    "boot",
    "platform",
    "firmware",
    "aliases",
    "seq",
    "historical",
    "samples",
    "histogram",
    "reason",
}


def _birth_before(index: int) -> Birth | None:
    for case in reversed(CASES[:index]):
        if case["expect"]["ok"] and parse_topic(case["topic"], PREFIX)[1] is FrameKind.BIRTH:
            return decode_birth(bytes.fromhex(case["payload_hex"]))
    return None


def _decode(
    case: dict[str, Any], birth: Birth | None, now_ms: int | None
) -> Birth | Death | tuple[RawTelemetry, Telemetry]:
    device_id, kind = parse_topic(case["topic"], PREFIX)
    assert device_id == DEVICE_ID
    payload = bytes.fromhex(case["payload_hex"])
    if kind is FrameKind.BIRTH:
        return decode_birth(payload, now_ms=now_ms)
    if kind is FrameKind.DEATH:
        return decode_death(payload)
    assert kind is FrameKind.TELEMETRY
    raw = decode_telemetry(payload, now_ms=now_ms)
    return raw, resolve_telemetry(raw, birth)


def loosely_matches(hint: str, error: ProtocolError) -> bool:
    """Any '/'-separated alternative of the hint whose words all appear in the error."""
    words = set(re.findall(r"[a-z0-9]+", str(error).lower()))
    return any(
        set(re.findall(r"[a-z0-9]+", alternative.lower())) <= words
        for alternative in hint.split("/")
    )


def test_every_expectation_key_is_checked() -> None:
    unknown = {key for case in CASES for key in case["expect"]} - CHECKED_KEYS
    assert not unknown, f"vectors expect things this test does not check: {unknown}"


@pytest.mark.parametrize("now_ms", [None, NOW_MS], ids=["no-clock", "clock"])
@pytest.mark.parametrize("index", range(len(CASES)), ids=[c["name"] for c in CASES])
def test_vector(index: int, now_ms: int | None) -> None:
    case = CASES[index]
    expect = case["expect"]
    birth = _birth_before(index)
    if not expect["ok"]:
        with pytest.raises(ProtocolError) as caught:
            _decode(case, birth, now_ms)
        assert loosely_matches(expect["reason"], caught.value), (
            f"{case['name']}: error {caught.value!s} does not match hint {expect['reason']!r}"
        )
        return

    result = _decode(case, birth, now_ms)
    if isinstance(result, Birth):
        _check_birth(result, expect)
    elif isinstance(result, Death):
        assert result.boot == expect["boot"]
    else:
        raw, telemetry = result
        assert birth is not None
        _check_telemetry(raw, telemetry, birth, expect)


def _check_birth(birth: Birth, expect: dict[str, Any]) -> None:
    assert birth.boot == expect["boot"]
    assert birth.platform == expect["platform"]
    assert birth.firmware == expect["firmware"]
    assert {str(m.alias): m.name for m in birth.metrics} == expect["aliases"]


def _check_telemetry(
    raw: RawTelemetry, telemetry: Telemetry, birth: Birth, expect: dict[str, Any]
) -> None:
    assert telemetry.boot == raw.boot == birth.boot
    assert telemetry.seq == expect["seq"]
    if "historical" in expect:
        assert telemetry.historical is expect["historical"]
    if "samples" in expect:
        assert len(telemetry.samples) == len(expect["samples"])
        for raw_sample, sample, (name, labels, value, timestamp) in zip(
            raw.samples, telemetry.samples, expect["samples"], strict=True
        ):
            assert isinstance(sample, Sample)
            assert sample.name == name
            assert dict(raw_sample.labels) == labels
            assert sample.labels == tuple(sorted({**dict(birth.labels), **labels}.items()))
            assert sample.value == value
            assert sample.timestamp_ms == timestamp
    if "histogram" in expect:
        want = expect["histogram"]
        (hist,) = [s for s in telemetry.samples if isinstance(s, HistogramSample)]
        assert hist.name == want["name"]
        assert hist.count == want["count"]
        assert hist.sum == want["sum"]
        assert hist.buckets == tuple(
            (math.inf if bound == "+Inf" else bound, count) for bound, count in want["buckets"]
        )
        assert hist.labels == birth.labels
