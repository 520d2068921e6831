"""decode_telemetry_rows is decode_telemetry with tuples: same frames, same errors."""

from __future__ import annotations

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from device_protocol import ProtocolError, TelemetryRows, decode_telemetry, decode_telemetry_rows

labels = st.dictionaries(st.sampled_from(["core", "site", "__x", "le", "9bad"]),
                         st.sampled_from(["0", "a", ""]), max_size=2)
value = st.one_of(st.floats(), st.integers(-2**40, 2**40), st.booleans(), st.text(max_size=3),
                  st.tuples(st.integers(0, 9), st.floats(0, 9), st.lists(st.integers(0, 9),
                                                                        max_size=3)))
sample = st.one_of(
    st.tuples(st.one_of(st.integers(-1, 2**33), st.sampled_from(["m_a", "bad-name"])), value),
    st.tuples(st.integers(0, 5), value, st.integers(-10**6, 10**6)),
    st.tuples(st.integers(0, 5), value, st.integers(-10**6, 10**6), labels),
    st.tuples(st.integers(0, 5)),
)
frame = st.fixed_dictionaries({
    "v": st.sampled_from([1, 1, 1, 2]), "b": st.integers(-1, 2**32), "s": st.integers(-1, 2**32),
    "t": st.integers(-5, 1_900_000_000_000), "m": st.lists(sample, max_size=6),
}, optional={"h": st.sampled_from([True, False, 1])})


def outcome(decode, payload: bytes, now_ms: int | None) -> object:  # type: ignore[no-untyped-def]
    try:
        return decode(payload, now_ms=now_ms)
    except ProtocolError as exc:
        return (type(exc), exc.reason, exc.detail)


@settings(max_examples=400)
@given(frame, st.sampled_from([None, 1_800_000_000_000]))
def test_rows_and_raw_decode_agree(obj: dict, now_ms: int | None) -> None:
    payload = msgpack.packb(obj)
    raw = outcome(decode_telemetry, payload, now_ms)
    rows = outcome(decode_telemetry_rows, payload, now_ms)
    if isinstance(rows, TelemetryRows):
        assert rows == TelemetryRows.from_raw(raw)  # type: ignore[arg-type]
        assert rows.to_raw() == raw
    else:
        assert rows == raw
