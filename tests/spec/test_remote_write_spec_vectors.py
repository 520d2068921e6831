"""The protocol's test vectors (tests/data/protocol-v1.json, payloads from independent
encoders) through the whole data path: what reaches the receiver is what the vectors say the
frames mean, with the labels docs/protocol.md gives every series, and nothing of the vectors
the gateway must refuse."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.spec.gateway_rig import run_through
from tests.spec.rw_receiver import RecordingReceiver

VECTORS = Path(__file__).parent.parent / "data" / "protocol-v1.json"
BASE = {"device_id": "dev-01", "site": "lab-7"}  # from the topic and birth-basic's labels


def expected_samples(case: dict[str, Any], t_ms: int) -> list[tuple[dict[str, str], int, float]]:
    expect = case["expect"]
    if "histogram" in expect:  # all at the frame's t (the vector's samples carry no dt)
        h = expect["histogram"]
        out = [({"__name__": h["name"] + "_bucket", **BASE,
                 "le": b if isinstance(b, str) else repr(float(b))}, t_ms, float(n))
               for b, n in h["buckets"]]
        return [*out, ({"__name__": h["name"] + "_sum", **BASE}, t_ms, h["sum"]),
                ({"__name__": h["name"] + "_count", **BASE}, t_ms, float(h["count"]))]
    return [({"__name__": name, **BASE, **labels}, ts, float(value))
            for name, labels, value, ts in expect["samples"]]


def test_protocol_vectors_reach_the_receiver_as_documented(tmp_path: Path,
                                                           receiver: RecordingReceiver) -> None:
    cases = json.loads(VECTORS.read_text())["cases"]
    births = [c for c in cases if c["topic"].endswith("/birth") and c["expect"]["ok"]]
    frames = [c for c in cases if c["topic"].endswith("/telemetry")]
    bad_births = [c for c in cases if c["topic"].endswith("/birth") and not c["expect"]["ok"]]
    groups = [[(c["topic"], bytes.fromhex(c["payload_hex"]))] for c in births + frames]
    run_through(tmp_path / "buffer.db", receiver.url, *groups,
                *([(c["topic"].replace("dev-01", "dev-02"), bytes.fromhex(c["payload_hex"]))]
                  for c in bad_births))
    got = sorted((key, s.timestamp_ms, s.value) for key, s in receiver.accepted_samples()
                 if dict(key)["__name__"] != "fleet_device_info")
    t_ms = 1790000000000  # the frames' t (telemetry-aliases' worked example)
    want = sorted((tuple(sorted(labels.items())), ts, value) for c in frames
                  if c["expect"]["ok"] for labels, ts, value in expected_samples(c, t_ms))
    assert got == want
    devices = {dict(key)["device_id"] for key, _ in receiver.accepted_samples()}
    assert devices == {"dev-01"}, "a refused birth yielded series"
