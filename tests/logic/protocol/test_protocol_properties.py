"""Properties: valid frames round-trip exactly; garbage only ever yields a ProtocolError."""

from __future__ import annotations

import math
import string
from collections.abc import Callable
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device_protocol import (
    Birth,
    Command,
    Death,
    GatewayState,
    HistogramSample,
    HistogramValue,
    MetricDef,
    MetricType,
    ProtocolError,
    RawSample,
    RawTelemetry,
    Sample,
    Telemetry,
    decode_birth,
    decode_command,
    decode_death,
    decode_gateway_state,
    decode_telemetry,
    encode_birth,
    encode_telemetry,
    resolve_telemetry,
)
from tests.logic.protocol.protocol_payloads import birth_map, pack, telemetry_map

# The VM these run on is noisy: a slow example is not a failure.
PROPERTY = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=150)
FUZZ = settings(PROPERTY, max_examples=400)

UINT32 = st.integers(0, 2**32 - 1)
FINITE = st.floats(allow_nan=False, allow_infinity=False)
LETTERS = string.ascii_letters + "_"
METRIC_NAMES = st.builds(
    lambda head, tail: head + tail,
    st.sampled_from(LETTERS + ":"),
    st.text(LETTERS + string.digits + ":", max_size=30),
)
LABEL_NAMES = st.builds(
    lambda head, tail: head + tail,
    st.sampled_from(LETTERS),
    st.text(LETTERS + string.digits, max_size=20),
).filter(lambda n: not n.startswith("__") and n not in ("device_id", "le"))
LABEL_VALUES = st.text(min_size=1, max_size=40)
LABELS = st.dictionaries(LABEL_NAMES, LABEL_VALUES, max_size=5).map(
    lambda d: tuple(sorted(d.items()))
)
BOUNDS = st.lists(FINITE, unique=True, max_size=8).map(lambda b: tuple(sorted(b)))


@st.composite
def metric_defs(draw: st.DrawFn) -> MetricDef:
    kind = draw(st.sampled_from(list(MetricType)))
    bounds = draw(BOUNDS) if kind is MetricType.HISTOGRAM else ()
    return MetricDef(draw(UINT32), draw(METRIC_NAMES), kind, bounds)


BIRTHS = st.builds(
    Birth,
    boot=UINT32,
    time_ms=st.integers(0, 2**63 - 1),
    platform=st.text(min_size=1, max_size=20),
    firmware=st.text(min_size=1, max_size=20),
    labels=LABELS,
    interval_ms=st.integers(1, 2**32 - 1),
    metrics=st.lists(
        metric_defs(), max_size=12, unique_by=(lambda m: m.alias, lambda m: m.name)
    ).map(tuple),
)


@st.composite
def histogram_values(draw: st.DrawFn, n_bounds: int) -> HistogramValue:
    counts = draw(st.lists(st.integers(0, 10**6), min_size=n_bounds + 1, max_size=n_bounds + 1))
    cumulative = [float(c) for c in sorted(counts)]
    return HistogramValue(cumulative[-1], draw(FINITE), tuple(cumulative[:-1]))


@st.composite
def frames(draw: st.DrawFn) -> tuple[Birth, RawTelemetry]:
    """A birth and a telemetry frame of the same boot that only uses what the birth allows."""
    birth = draw(BIRTHS)
    declared = {m.name for m in birth.metrics}
    time_ms = draw(st.integers(0, 2**62))
    samples = []
    for _ in range(draw(st.integers(0, 25))):
        metric: int | str
        value: float | HistogramValue
        if draw(st.booleans()) and birth.metrics:
            m = draw(st.sampled_from(birth.metrics))
            metric = m.alias if draw(st.booleans()) else m.name
            is_histogram = m.type is MetricType.HISTOGRAM
            value = draw(histogram_values(len(m.bounds))) if is_histogram else draw(FINITE)
        else:
            metric = draw(METRIC_NAMES.filter(lambda n: n not in declared))
            value = draw(FINITE)
        dt = draw(st.integers(-min(time_ms, 10**9), 10**9))
        samples.append(RawSample(metric, value, dt, draw(LABELS)))
    raw = RawTelemetry(birth.boot, draw(UINT32), time_ms, tuple(samples), draw(st.booleans()))
    return birth, raw


@PROPERTY
@given(BIRTHS)
def test_births_round_trip(birth: Birth) -> None:
    assert decode_birth(encode_birth(birth)) == birth


@PROPERTY
@given(frames())
def test_telemetry_round_trips_and_resolves(frame: tuple[Birth, RawTelemetry]) -> None:
    birth, raw = frame
    decoded = decode_telemetry(encode_telemetry(raw))
    assert decoded == raw
    resolved = resolve_telemetry(decoded, birth)
    assert resolved == _model_resolve(raw, birth)


def _model_resolve(raw: RawTelemetry, birth: Birth) -> Telemetry:
    """resolve_telemetry written the obvious way, as the reference."""
    by_alias, by_name = birth.by_alias(), birth.by_name()
    out: list[Sample | HistogramSample] = []
    for s in raw.samples:
        definition = by_alias[s.metric] if isinstance(s.metric, int) else by_name.get(s.metric)
        name = definition.name if definition else str(s.metric)
        labels = tuple(sorted({**dict(birth.labels), **dict(s.labels)}.items()))
        timestamp = raw.time_ms + s.dt_ms
        if isinstance(s.value, HistogramValue):
            assert definition is not None
            value = s.value
            buckets = (*zip(definition.bounds, value.buckets, strict=True), (math.inf, value.count))
            out.append(HistogramSample(name, labels, value.count, value.sum, buckets, timestamp))
        else:
            out.append(Sample(name, labels, s.value, timestamp))
    return Telemetry(raw.boot, raw.seq, raw.time_ms, tuple(out), raw.historical)


# ------------------------------------------------------------------------------ hostile input

ALL_DECODERS: tuple[Callable[[bytes], object], ...] = (
    decode_birth,
    decode_telemetry,
    decode_death,
    decode_command,
    decode_gateway_state,
)
RESULT_TYPES = (Birth, RawTelemetry, Death, Command, GatewayState)
FUZZ_BIRTH = decode_birth(pack(birth_map()))


def _decode_everything(payload: bytes) -> None:
    for decode, result_type in zip(ALL_DECODERS, RESULT_TYPES, strict=True):
        try:
            result = decode(payload)
        except ProtocolError:
            continue
        assert type(result) is result_type
        if isinstance(result, RawTelemetry):
            try:
                resolve_telemetry(result, FUZZ_BIRTH)
            except ProtocolError:
                pass


SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=10)
    | st.binary(max_size=10)
    | st.sampled_from(["v", "b", "s", "t", "m", "h", "labels", "metrics", "gauge", "histogram"])
)
STRUCTURES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.sampled_from(["v", "b", "s", "t", "m", "h"]) | SCALARS, children, max_size=5
        )
    ),
    max_leaves=30,
)


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes_yield_frames_or_protocol_errors(payload: bytes) -> None:
    _decode_everything(payload)


@FUZZ
@given(STRUCTURES)
def test_arbitrary_msgpack_yields_frames_or_protocol_errors(obj: Any) -> None:
    try:
        payload = msgpack.packb(obj, use_bin_type=True)
    except (ValueError, TypeError, OverflowError):  # e.g. unhashable or out-of-range values
        return
    _decode_everything(payload)


VALID_MAPS = [
    telemetry_map(m=[[0, 1.0], ["x_y", 2, 5, {"a": "b"}], [2, [3, 0.5, [1, 2, 3]]]]),
    birth_map(),
    {"v": 1, "b": 1},
    {"rebirth": True},
    {"online": True, "t": 5},
]


@FUZZ
@given(st.sampled_from(VALID_MAPS), st.data())
def test_valid_frames_with_one_field_broken(base: dict[str, Any], data: st.DataObject) -> None:
    obj = dict(base)
    key = data.draw(st.sampled_from(sorted(obj)))
    if data.draw(st.booleans()):
        del obj[key]
    else:
        obj[key] = data.draw(STRUCTURES)
    _decode_everything(msgpack.packb(obj, use_bin_type=True))


@PROPERTY
@given(st.data())
def test_valid_samples_with_one_element_broken(data: st.DataObject) -> None:
    sample: list[Any] = list(data.draw(st.sampled_from(VALID_MAPS[0]["m"])))
    index = data.draw(st.integers(0, len(sample) - 1))
    sample[index] = data.draw(STRUCTURES)
    _decode_everything(msgpack.packb(telemetry_map(m=[sample]), use_bin_type=True))
