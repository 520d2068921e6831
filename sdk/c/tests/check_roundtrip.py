"""Checks the C SDK's payloads with the gateway's own decoder (device_protocol).

    python sdk/c/tests/check_roundtrip.py HOST_OUT [OTHER_OUT ...]

Each file holds print_cases' lines, "name topic hex", then "end <failures>" (fg_cases.c).
HOST_OUT is the host build's output; every OTHER_OUT (the Cortex-M4 image under QEMU) must be
identical to it byte for byte. On each file:

- every valid case of tests/data/protocol-v1.json that an encoder can produce (births,
  telemetry, deaths) has a C twin of the same name with the same bytes, which decodes to the
  same meaning as the vector;
- the "sdk" lines, every publish of the scripted device life in fg_cases.c, decode in order
  with exactly the topics, seqs, h flags, values and timestamps the script implies.

Exit 0 when all holds, else 1 with the reasons.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from device_protocol import (  # noqa: E402 - needs ROOT on the path first
    Birth,
    HistogramSample,
    Sample,
    Telemetry,
    decode_birth,
    decode_death,
    decode_telemetry,
    resolve_telemetry,
)

VECTORS = ROOT / "tests" / "data" / "protocol-v1.json"
ENCODABLE_KINDS = ("birth", "telemetry", "death")
T0 = 1790000000000
BOOT = 0x01020304
BOUNDS = (1.0, 5.0, 10.0, 50.0)
OBSERVATIONS = (0.5, 3.0, 7.0, 20.0, 100.0)
# fg_cases.c sdk_life(): what reaches the transport, in order. ("t", seq, h) is telemetry.
SDK_ORDER: list[tuple[str, int, bool]] = [
    ("birth", 0, False),
    ("t", 0, False), ("t", 1, False), ("t", 2, False),
    ("birth", 15000, False),  # reconnect; seq 3..8 were dropped by the 512-byte ring
    ("t", 9, True), ("t", 10, True), ("t", 11, True), ("t", 12, True),  # window 2, acked
    ("t", 15, False), ("t", 13, True), ("t", 14, True),  # live, then the refilled window
    ("birth", 16000, False), ("birth", 16000, False),  # cmd rebirth, gateway online
    ("t", 16, False),
    ("death", 0, False),
]
SDK_STATS = {"built": 17, "sent": 5, "ringed": 12, "dropped": 6, "replayed": 6, "too_big": 0,
             "births": 4, "publish_errors": 0, "ring": 0}


@dataclass(frozen=True)
class Line:
    name: str
    topic: str
    payload: bytes


def read_lines(path: Path) -> tuple[list[Line], list[str]]:
    lines, problems = [], []
    text = path.read_text().splitlines()
    if not text or text[-1] != "end 0":
        problems.append(f"{path}: last line {text[-1:]!r}, expected 'end 0' (C-side failures)")
    for raw in text:
        parts = raw.split(" ")
        if len(parts) == 3:
            lines.append(Line(parts[0], parts[1], bytes.fromhex(parts[2])))
    return lines, problems


def check_vectors(lines: list[Line]) -> list[str]:
    problems = []
    ours = {line.name: line for line in lines}
    births: dict[str, Birth] = {}
    for case in json.loads(VECTORS.read_text())["cases"]:
        kind = case["topic"].rsplit("/", 1)[1]
        if not case["expect"]["ok"] or kind not in ENCODABLE_KINDS:
            continue
        name, theirs = case["name"], bytes.fromhex(case["payload_hex"])
        line = ours.get(name)
        if line is None:
            problems.append(f"{name}: valid {kind} vector with no C twin (add it to fg_cases.c)")
            continue
        if line.topic != case["topic"]:
            problems.append(f"{name}: topic {line.topic!r}, vector {case['topic']!r}")
        try:
            same = same_meaning(kind, line.payload, theirs, births)
        except Exception as exc:  # any decode error is the finding
            problems.append(f"{name}: C payload {line.payload.hex()} refused: {exc!r}")
            continue
        if not same:
            problems.append(f"{name}: C payload {line.payload.hex()} means something else")
        if line.payload != theirs:
            problems.append(f"{name}: not byte-identical to the vector: {line.payload.hex()}")
    return problems


def same_meaning(kind: str, ours: bytes, theirs: bytes, births: dict[str, Birth]) -> bool:
    if kind == "birth":
        births["vector"] = decode_birth(theirs)
        return decode_birth(ours) == births["vector"]
    if kind == "death":
        return decode_death(ours) == decode_death(theirs)
    birth = births.get("vector")
    mine, vector = decode_telemetry(ours), decode_telemetry(theirs)
    return (mine.seq, mine.historical) == (vector.seq, vector.historical) and resolve_telemetry(
        mine, birth
    ) == resolve_telemetry(vector, birth)


def expected_values(seq: int) -> dict[str, object]:
    seen = [OBSERVATIONS[i % 5] for i in range(seq + 1)]
    cumulative = tuple((b, float(sum(1 for v in seen if v <= b))) for b in BOUNDS)
    values: dict[str, object] = {
        "board_temp_c": 20.0 + 0.5 * seq,
        "inferences_total": 2.0 * (seq + 1),
        "latency_ms": (float(len(seen)), sum(seen), (*cumulative, (float("inf"), len(seen)))),
    }
    if seq >= 10:  # declared (alias 3) right after frame 9 was built
        values["uptime_s"] = 9.0
    return values


def actual_values(frame: Telemetry) -> dict[str, object]:
    values: dict[str, object] = {}
    for s in frame.samples:
        if s.labels != (("site", "lab"),) or s.timestamp_ms != T0 + 1000 * frame.seq:
            values[s.name] = f"labels {s.labels} at {s.timestamp_ms}"
        elif isinstance(s, HistogramSample):
            values[s.name] = (s.count, s.sum, s.buckets)
        elif isinstance(s, Sample):
            values[s.name] = s.value
    return values


def check_sdk(lines: list[Line]) -> list[str]:
    sdk = [line for line in lines if line.name == "sdk"]
    if len(sdk) != len(SDK_ORDER):
        return [f"sdk: {len(sdk)} publishes, expected {len(SDK_ORDER)}"]
    problems, births = [], []
    for i, (line, (kind, n, historical)) in enumerate(zip(sdk, SDK_ORDER, strict=True)):
        where = f"sdk publish {i} ({kind} {n})"
        topic_kind = "telemetry" if kind == "t" else kind
        if line.topic != f"fleet/dev-01/{topic_kind}":
            problems.append(f"{where}: topic {line.topic}")
        try:
            if kind == "birth":
                birth = decode_birth(line.payload)
                births.append(birth)
                if (birth.boot, birth.time_ms, birth.labels) != (BOOT, T0 + n, (("site", "lab"),)):
                    problems.append(f"{where}: {birth}")
                if birth.metrics[: len(births[0].metrics)] != births[0].metrics:
                    problems.append(f"{where}: a re-birth changed earlier aliases")
            elif kind == "death":
                if decode_death(line.payload).boot != BOOT:
                    problems.append(f"{where}: wrong boot")
            else:
                frame = resolve_telemetry(decode_telemetry(line.payload), births[-1])
                if (frame.seq, frame.historical) != (n, historical):
                    problems.append(f"{where}: seq {frame.seq} h {frame.historical}")
                if actual_values(frame) != expected_values(n):
                    problems.append(f"{where}: {actual_values(frame)} != {expected_values(n)}")
        except Exception as exc:  # any decode error is the finding
            problems.append(f"{where}: refused: {exc!r}")
    return problems


def check_stats(lines: list[Line]) -> list[str]:
    import msgpack

    found = [msgpack.unpackb(line.payload) for line in lines if line.name == "sdk-stats"]
    return [] if found == [SDK_STATS] else [f"sdk-stats: {found}, expected {SDK_STATS}"]


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    host, problems = read_lines(Path(argv[0]))
    problems += check_vectors(host) + check_sdk(host) + check_stats(host)
    for other in argv[1:]:
        lines, more = read_lines(Path(other))
        # decoded on their own too, so a failure names the payload, not only the difference
        problems += more + check_vectors(lines) + check_sdk(lines) + check_stats(lines)
        if lines != host:
            diff = [f"{a.name}: {a.payload.hex()} vs {b.payload.hex()}"
                    for a, b in zip(host, lines, strict=False) if a != b]
            problems.append(f"{other}: {len(lines)} lines differ from {argv[0]} "
                            f"({len(host)} lines): {diff[:3]}")
    for problem in problems:
        print(f"check_roundtrip: FAIL {problem}")
    if not problems:
        checked = ", ".join(argv[1:]) or "no other build"
        print(f"check_roundtrip: ok: {len(host)} payloads decode as expected; "
              f"identical in {checked}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
