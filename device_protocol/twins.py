"""Fast construction of frozen frames, for the decode/resolve hot loops.

A frozen dataclass's __init__ stores each field through object.__setattr__; on the gateway's
machine that costs ~0.8 µs per RawSample or Sample, more than all the decoding around it (a
20-sample frame builds over 40 frames). A twin has exactly the slot layout of its frozen class:
an instance is filled with plain slot stores and then re-labelled as the frozen class, which
CPython allows between classes of identical layout:

    obj = RawSampleTwin(metric, value, dt_ms, labels)
    obj.__class__ = RawSample        # ~0.2 µs in all

The result is an ordinary instance of the frozen class (same type, ==, hash, repr, pickling,
and immutable from then on). Twins are generated from dataclasses.fields(), as dataclasses
generates __init__ itself, so they cannot drift from frames.py. Only the frames built per
sample or per frame on the hot path have twins; tests/logic/protocol/test_protocol_resolve.py checks
that what they build is indistinguishable from normally built frames.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from .frames import HistogramSample, HistogramValue, RawSample, RawTelemetry, Sample, Telemetry


def _twin(frozen: type) -> Any:
    names = [f.name for f in fields(frozen)]
    if list(getattr(frozen, "__slots__", ())) != names:
        raise TypeError(f"{frozen.__name__}: a twin needs exactly the fields as __slots__")
    body = "".join(f"    self.{name} = {name}\n" for name in names) or "    pass\n"
    namespace: dict[str, Any] = {}
    # Generated like dataclasses' own __init__: a loop over the fields would cost what we save.
    exec(f"def __init__(self, {', '.join(names)}):\n{body}", namespace)
    return type(
        f"{frozen.__name__}Twin", (), {"__slots__": names, "__init__": namespace["__init__"]}
    )


RawSampleTwin = _twin(RawSample)
RawTelemetryTwin = _twin(RawTelemetry)
HistogramValueTwin = _twin(HistogramValue)
SampleTwin = _twin(Sample)
HistogramSampleTwin = _twin(HistogramSample)
TelemetryTwin = _twin(Telemetry)
