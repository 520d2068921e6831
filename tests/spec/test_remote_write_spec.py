"""The forwarder against the Prometheus remote-write 1.0 spec: the wire, labels, order, counts.

One test per rule of https://prometheus.io/docs/specs/remote_write_spec/, named after it.
Frames are built by hand from docs/protocol.md (device_frames), pass through the gateway's real
pipeline, SQLite buffer, forwarder and HTTP client (gateway_rig), and are read back at a real
HTTP receiver with a decoder that shares no code with the gateway (rw_receiver, rw_wire).
Retries and status codes: test_remote_write_spec_answers.py; stale markers:
test_remote_write_spec_staleness.py.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import defaultdict
from pathlib import Path

import msgpack
import pytest

import gateway
from tests.spec.device_frames import (
    BOOT,
    BOUNDS,
    COUNTER,
    DEVICE,
    GAUGE,
    HISTOGRAM,
    STANDARD_METRICS,
    birth,
    birth_msg,
    histogram,
    now_ms,
    repeated_key_map,
    tele_msg,
    telemetry,
    telemetry_with_raw_sample,
    topic,
)
from tests.spec.gateway_rig import LocalGateway, run_through
from tests.spec.rw_receiver import RecordingReceiver, Reply
from tests.spec.rw_wire import Sample
from tests.spec.spec_cases import (
    Key,
    a_device_reporting,
    all_series,
    device_key,
    order_violations,
    sent,
)

VECTORS = Path(__file__).parent.parent / "data" / "protocol-v1.json"
METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
SNAPPY_FRAMED_MAGIC = b"\xff\x06\x00\x00sNaPpY"


# ---------------------------------------------------------------------- support self-check
def test_hand_built_frames_match_the_protocol_vectors() -> None:
    """The hand-built encoder gives the documented bytes (else the suite tests nothing)."""
    cases = {c["name"]: c for c in json.loads(VECTORS.read_text())["cases"]}
    metrics = [[0, "device_temperature_celsius", "gauge"], [1, "liquid_inference_total", "counter"],
               [2, "liquid_inference_duration_seconds", "histogram", [0.001, 0.01, 0.1, 1.0]]]
    assert birth(0xDEADBEEF, t_ms=1790000000000, labels={"site": "lab-7"}, interval_ms=10000,
                 metrics=metrics).hex() == cases["birth-basic"]["payload_hex"]
    assert telemetry(0xDEADBEEF, 0, [[0, 41.5], [1, 1200], [0, 41.75, 5000]],
                     t_ms=1790000000000).hex() == cases["telemetry-aliases"]["payload_hex"]


# ---------------------------------------------------------------------- the wire
def test_content_encoding_is_snappy_block(tmp_path: Path, receiver: RecordingReceiver) -> None:
    for r in sent(tmp_path, receiver, *a_device_reporting(now_ms())):
        assert r.headers.get("content-encoding") == "snappy"
        assert not r.body.startswith(SNAPPY_FRAMED_MAGIC), "framed snappy: receivers answer 400"
        assert r.wire_error is None, r.wire_error


def test_content_type_is_x_protobuf(tmp_path: Path, receiver: RecordingReceiver) -> None:
    for r in sent(tmp_path, receiver, *a_device_reporting(now_ms())):
        assert r.headers.get("content-type") == "application/x-protobuf"
        assert all(not s.unknown_fields for s in r.series), "fields beyond remote-write 1.0"


def test_version_header_is_0_1_0(tmp_path: Path, receiver: RecordingReceiver) -> None:
    for r in sent(tmp_path, receiver, *a_device_reporting(now_ms())):
        assert r.headers.get("x-prometheus-remote-write-version") == "0.1.0"


def test_user_agent_names_fleetgate(tmp_path: Path, receiver: RecordingReceiver) -> None:
    for r in sent(tmp_path, receiver, *a_device_reporting(now_ms())):
        assert r.headers.get("user-agent") == f"fleetgate/{gateway.__version__}"


def test_writes_are_http_posts_to_the_configured_url(tmp_path: Path,
                                                     receiver: RecordingReceiver) -> None:
    for r in sent(tmp_path, receiver, *a_device_reporting(now_ms())):
        assert (r.method, r.path) == ("POST", "/api/v1/write")
        assert r.headers.get("content-length") == str(len(r.body)), "a sized body, not chunked"
        assert "transfer-encoding" not in r.headers


def test_timestamps_are_int64_milliseconds_of_the_samples(tmp_path: Path,
                                                          receiver: RecordingReceiver) -> None:
    t = now_ms() - 10_000
    requests = sent(tmp_path, receiver, [birth_msg()],
                    [tele_msg(0, [[GAUGE, 1.5, 0], [GAUGE, 2.5, 1234]], t_ms=t)])
    gauge = [s for s in all_series(requests) if s.name == "device_temperature_celsius"]
    assert sorted((x.timestamp_ms, x.value) for s in gauge for x in s.samples) == [
        (t, 1.5), (t + 1234, 2.5)]


# ---------------------------------------------------------------------- labels
def test_labels_sorted_by_name(tmp_path: Path, receiver: RecordingReceiver) -> None:
    """Upper-case names sort before `__name__` in byte order, as in Prometheus's own code."""
    labels = {"site": "lab-7", "Zone": "eu", "aisle": "3", "z_rack": "r1"}
    requests = sent(tmp_path, receiver, [birth_msg(labels=labels)],
                    [tele_msg(0, [[GAUGE, 20.0], ["fan_speed_rpm", 900, 0, {"B": "x", "a": "y"}],
                                  [HISTOGRAM, histogram(1, 0.1, [0, 1, 1])]])])
    for s in all_series(requests):
        names = [name for name, _ in s.labels]
        assert names == sorted(names), f"{s.name}: labels sent as {names}"


def test_label_names_unique(tmp_path: Path, receiver: RecordingReceiver) -> None:
    """A sample label of the same name as a birth label overrides it: one label, not two."""
    requests = sent(tmp_path, receiver, [birth_msg()],
                    [tele_msg(0, [[GAUGE, 20.0, 0, {"site": "lab-9"}], [COUNTER, 3]])])
    for s in all_series(requests):
        names = [name for name, _ in s.labels]
        assert len(names) == len(set(names)), f"{s.name}: repeated label names {names}"
    gauge = [s for s in all_series(requests) if s.name == "device_temperature_celsius"]
    assert [s.label("site") for s in gauge] == ["lab-9"]


@pytest.mark.parametrize("where", ["sample-label", "birth-label"])
def test_no_empty_label_values(tmp_path: Path, receiver: RecordingReceiver, where: str) -> None:
    """An empty label value is no label (as Prometheus reads it): the label is dropped and the
    sample kept, never sent with an empty value (issue 11, finding 12)."""
    own = {"core": ""} if where == "sample-label" else {}
    birth_labels = {"site": "lab-7", **({"rack": ""} if where == "birth-label" else {})}
    requests = sent(tmp_path, receiver, [birth_msg(labels=birth_labels)],
                    [tele_msg(0, [[GAUGE, 20.0], ["fan_speed_rpm", 900, 0, own]])])
    for s in all_series(requests):
        assert all(value for _, value in s.labels), f"{s.name}: empty label value {s.labels}"
    fan = [s for s in all_series(requests) if s.name == "fan_speed_rpm"]
    assert [(s.key(), [x.value for x in s.samples]) for s in fan] == [
        (device_key("fan_speed_rpm"), [900.0])]


def test_repeated_label_names_are_refused(tmp_path: Path, receiver: RecordingReceiver) -> None:
    """A labels map that names `a` twice (compliance suite, RepeatedLabels): no sample of it is
    sent, neither with the label twice nor with one of its values picked."""
    packer = msgpack.Packer(use_bin_type=True)
    sample = (packer.pack_array_header(4) + packer.pack("test_gauge") + packer.pack(1.0)
              + packer.pack(0) + repeated_key_map(("a", "1"), ("a", "2")))
    frame = (topic(DEVICE, "telemetry"),
             telemetry_with_raw_sample(BOOT, 0, sample, t_ms=now_ms()))
    run_through(tmp_path / "buffer.db", receiver.url, [birth_msg()], [frame],
                [tele_msg(1, [[GAUGE, 20.0]])])
    names = [s.name for s in receiver.accepted_series()]
    assert "device_temperature_celsius" in names, "the next frame went through"
    assert "test_gauge" not in names


def test_label_values_are_any_utf8_sent_unchanged(tmp_path: Path,
                                                  receiver: RecordingReceiver) -> None:
    """Label values MAY be any UTF-8 (protobuf needs no escaping): quotes, backslashes,
    newlines and non-ASCII arrive byte for byte."""
    odd = 'Zürich "東京" \\ 🚀\nline 2'
    requests = sent(tmp_path, receiver, [birth_msg(labels={"site": odd})],
                    [tele_msg(0, [[GAUGE, 20.0], ["fan_speed_rpm", 900, 0, {"note": odd}]])])
    fan = [s for s in all_series(requests) if s.name == "fan_speed_rpm"]
    assert [(s.label("site"), s.label("note")) for s in fan] == [(odd, odd)]


def test_metric_and_label_names_valid(tmp_path: Path, receiver: RecordingReceiver) -> None:
    requests = sent(tmp_path, receiver, [birth_msg(labels={"site": "lab-7", "_rack": "r2"})],
                    [tele_msg(0, [[GAUGE, 20.0], ["job:fan_speed:rpm", 900, 0, {"Core_1": "x"}],
                                  [HISTOGRAM, histogram(1, 0.1, [0, 1, 1])]])])
    for s in all_series(requests):
        assert METRIC_NAME.fullmatch(s.name), f"invalid metric name {s.name!r}"
        for name, _ in s.labels:
            assert LABEL_NAME.fullmatch(name), f"{s.name}: invalid label name {name!r}"
            assert name == "__name__" or not name.startswith("__"), f"reserved label {name}"


def test_every_series_has_a_metric_name(tmp_path: Path, receiver: RecordingReceiver) -> None:
    for s in all_series(sent(tmp_path, receiver, *a_device_reporting(now_ms()))):
        assert [name for name, _ in s.labels].count("__name__") == 1, s.labels


# ---------------------------------------------------------------------- ordering
@pytest.mark.parametrize("case", ["dt-offsets", "replay-beside-live"])
def test_series_samples_in_timestamp_order_within_request(
        tmp_path: Path, receiver: RecordingReceiver, case: str) -> None:
    """A sender MUST send the samples of a series in timestamp order (issue 11, finding 8):
    a frame whose samples carry dt +500 then -500, and a replayed frame (h) sent in the same
    request as a newer live frame of the same device."""
    t = now_ms() - 5_000
    if case == "dt-offsets":
        frames = [tele_msg(0, [[GAUGE, 1.0, 500], [GAUGE, 2.0, -500]], t_ms=t)]
    else:
        frames = [tele_msg(5, [[GAUGE, 5.0], [COUNTER, 50]], t_ms=t),
                  tele_msg(2, [[GAUGE, 2.0], [COUNTER, 20]], t_ms=t - 3_000, historical=True)]
    requests = sent(tmp_path, receiver, [birth_msg()], frames)
    assert len(requests) == 1, "the case needs both samples in one request"
    assert order_violations(requests) == []


def test_series_samples_in_timestamp_order_across_the_parts_of_a_split_frame(
        tmp_path: Path, receiver: RecordingReceiver) -> None:
    """A frame larger than the cap whose samples go back in time (dt descending) is split
    so that its series stay in timestamp order from one request to the next."""
    t = now_ms() - 300_000
    frame = tele_msg(0, [[GAUGE, float(i), -1000 * i] for i in range(120)]
                     + [[COUNTER, i, -1000 * i] for i in range(120)], t_ms=t)
    requests = sent(tmp_path, receiver, [birth_msg()], [frame], max_samples_per_request=50)
    assert len(requests) >= 5 and max(r.sample_count for r in requests) <= 50
    stamps: dict[Key, list[int]] = defaultdict(list)
    for r in requests:
        for key, sample in r.samples():
            stamps[key].append(sample.timestamp_ms)
    for name in ("device_temperature_celsius", "inference_total"):
        assert stamps[device_key(name)] == [t - 1000 * i for i in reversed(range(120))], name


def test_one_request_in_flight_keeps_every_series_in_order(
        tmp_path: Path, receiver: RecordingReceiver) -> None:
    """Only different series may be sent in parallel: while a request is in flight, frames
    arriving later wait for it, and every series arrives in timestamp order overall."""
    receiver.script(Reply(204, hold=True))
    t = now_ms() - 60_000

    async def go() -> None:
        async with LocalGateway(tmp_path / "buffer.db", receiver.url,
                                max_samples_per_request=4) as gw:
            gw.start()
            await gw.publish(birth_msg(), tele_msg(0, [[GAUGE, 0.0]], t_ms=t))
            await receiver.until(lambda rx: rx.held == 1, what="the first request held")
            for seq in range(1, 9):
                await gw.publish(tele_msg(seq, [[GAUGE, float(seq)], [COUNTER, seq]],
                                          t_ms=t + seq * 1000))
            await asyncio.sleep(0.3)  # an absence: nothing may overtake the held request
            assert len(receiver.snapshot()) == 1, receiver.describe()
            receiver.release()
            await gw.drain()

    asyncio.run(go())
    accepted = [r for r in receiver.with_samples() if r.accepted]
    stamps: dict[Key, list[int]] = defaultdict(list)
    for r in accepted:
        for key, sample in r.samples():
            stamps[key].append(sample.timestamp_ms)
    assert stamps[device_key("device_temperature_celsius")] == [t + s * 1000 for s in range(9)]
    assert all(v == sorted(v) for v in stamps.values())


# ---------------------------------------------------------------------- sizes and counts
def test_max_samples_per_request_is_never_exceeded(tmp_path: Path,
                                                   receiver: RecordingReceiver) -> None:
    """remote_write_max_samples=50 holds for a frame of 200 samples and for a frame of 10
    histograms (230 series); a frame larger than the cap is split across requests, each
    series in order (issue 11, finding 11)."""
    bounds = [0.001 * 2**i for i in range(20)]
    metrics = [*STANDARD_METRICS,
               *([10 + i, f"stage{i}_seconds", "histogram", bounds] for i in range(10))]
    t = now_ms() - 30_000
    big = tele_msg(0, [["channel_volts", float(i), 0, {"ch": str(i)}] for i in range(200)],
                   t_ms=t)
    hist = tele_msg(1, [[10 + i, histogram(20, 1.0, list(range(1, 21)))] for i in range(10)],
                    t_ms=t + 1000)
    requests = sent(tmp_path, receiver, [birth_msg(metrics=metrics)], [big], [hist],
                    max_samples_per_request=50)
    assert max(r.sample_count for r in requests) <= 50, receiver.describe()
    counts = receiver.accepted_counts()
    assert sum(1 for key, _, _ in counts if dict(key)["__name__"] == "channel_volts") == 200
    assert sum(1 for key, _, _ in counts if dict(key)["__name__"].startswith("stage")) == 230
    assert set(counts.values()) == {1}
    assert order_violations(requests) == []


def test_each_sample_sent_once_on_success(tmp_path: Path, receiver: RecordingReceiver) -> None:
    """Any 2xx is success: what was accepted is never sent again, and every sample the
    device sent arrives, exactly as the protocol document says it should read."""
    receiver.responder = lambda r: Reply(200, b"ok") if r.index % 2 else Reply(204)
    t = now_ms() - 60_000
    frames = [tele_msg(seq, [[GAUGE, 20.0 + seq], [COUNTER, seq],
                             [HISTOGRAM, histogram(seq, 0.1 * seq, [0, seq // 2, seq])],
                             ["fan_speed_rpm", 100 * seq, 250, {"core": "1"}]],
                       t_ms=t + seq * 1000) for seq in range(12)]
    sent(tmp_path, receiver, [birth_msg()], *([f] for f in frames), max_samples_per_request=16)
    assert all(r.sample_count for r in receiver.snapshot()), "an empty request while healthy"
    expected = []
    for seq in range(12):
        ts = t + seq * 1000
        expected += [(device_key("device_temperature_celsius"), ts, 20.0 + seq),
                     (device_key("inference_total"), ts, float(seq)),
                     (device_key("inference_duration_seconds_sum"), ts, 0.1 * seq),
                     (device_key("inference_duration_seconds_count"), ts, float(seq)),
                     (device_key("fan_speed_rpm", core="1"), ts + 250, 100.0 * seq)]
        for bound, count in zip([*BOUNDS, "+Inf"], [0, seq // 2, seq, seq], strict=True):
            le = bound if isinstance(bound, str) else repr(bound)
            expected.append((device_key("inference_duration_seconds_bucket", le=le), ts,
                             float(count)))
    got = receiver.accepted_counts()
    device_samples = sorted((key, ts, value) for key, ts, value in
                            ((k, ts, _value(bits)) for (k, ts, bits), n in got.items()
                             for _ in range(n))
                            if dict(key)["__name__"] != "fleet_device_info")
    assert device_samples == sorted(expected)
    assert sum(n for (k, _, _), n in got.items()
               if dict(k)["__name__"] == "fleet_device_info") == 1


def _value(bits: int) -> float:
    return Sample(bits, 0).value
