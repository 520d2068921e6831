"""Checks of the benchmark's own tools (not part of `make test`):

    .venv/bin/pytest bench/test_bench.py
"""

from __future__ import annotations

import argparse
import json
import struct
import subprocess
import sys
from pathlib import Path

import api as api_bench
import drain
import gateway_launcher
import loadgen
import pacer
import procstat
import profile_summary
import pytest
import results_file
import rw_recorder
import same_run
import stats
import tls_compare
import tree_compare
import vmagent_peer

from device_protocol import decode_birth, decode_telemetry, resolve_telemetry
from devstack import Mosquitto
from gateway.remote_write.wire import decode_write_request, decompress, encode_varint

BENCH_DIR = Path(__file__).resolve().parent


@pytest.mark.parametrize(("n", "encoded"), [
    (0, "00"), (127, "7f"), (128, "8001"), (16_383, "ff7f"), (16_384, "808001"),
    (268_435_455, "ffffff7f"),  # the MQTT 3.1.1 spec's own examples
])
def test_remaining_length_matches_the_spec(n: int, encoded: str) -> None:
    assert loadgen._remaining_length(n).hex() == encoded


def test_packet_ids_cycle_through_1_to_65535_and_never_0() -> None:
    assert [loadgen.packet_id_for(n) for n in (0, 1, 65_534, 65_535, 65_536)] == [
        1, 2, 65_535, 1, 2]


def test_a_publish_packet_carries_a_frame_the_gateway_would_accept() -> None:
    workload = loadgen.Workload.ending_in_past(devices=3, frames=2, samples=20)
    payload = loadgen.telemetry_payload(workload, device=2, seq=1)
    packet = loadgen.publish_qos1(b"fleet/bench-00002/telemetry", 300, payload)

    assert packet[0] == 0x32  # PUBLISH, QoS 1
    length, at = 0, 1
    for shift in range(0, 28, 7):
        byte = packet[at]
        at += 1
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
    assert length == len(packet) - at
    topic_len = int.from_bytes(packet[at:at + 2], "big")
    assert packet[at + 2:at + 2 + topic_len] == b"fleet/bench-00002/telemetry"
    assert int.from_bytes(packet[at + 2 + topic_len:at + 4 + topic_len], "big") == 300
    assert packet[at + 4 + topic_len:] == payload

    birth = decode_birth(loadgen.birth_payload(workload))
    frame = resolve_telemetry(decode_telemetry(payload), birth)
    assert frame.seq == 1 and frame.time_ms == workload.base_ms + 1000
    assert [(s.name, getattr(s, "value", None)) for s in frame.samples] == [
        (loadgen.metric_name(m), loadgen.sample_value(2, 1, m)) for m in range(20)]


def test_streams_expect_one_puback_per_packet_in_order() -> None:
    workload = loadgen.Workload.ending_in_past(devices=5, frames=3, samples=2)
    births, telemetry = loadgen.build_phases(workload, connections=2)
    assert [s.count for s in births] == [3, 2]  # devices 0, 2, 4 | 1, 3
    assert [s.count for s in telemetry] == [9, 6]
    # Telemetry continues each connection's packet ids after its births.
    assert telemetry[0].expected_acks[:4] == b"\x40\x02\x00\x04"
    assert len(telemetry[1].expected_acks) == 4 * 6
    assert telemetry[1].ends[-1] == len(telemetry[1].data)


def test_loadgen_delivers_every_message_to_a_subscriber(tmp_path: Path) -> None:
    """End to end through a real broker: every frame published arrives, none twice."""
    devices, frames = 50, 10
    with Mosquitto(tmp_path / "mosquitto") as mosq:
        bare = subprocess.Popen(
            [sys.executable, str(BENCH_DIR / "bare_subscriber.py"), "--mqtt", mosq.url,
             "--count", str(devices * frames)], stdout=subprocess.PIPE, text=True)
        try:
            assert bare.stdout is not None
            assert bare.stdout.readline().strip() == "ready"
            out = subprocess.run(
                [sys.executable, str(BENCH_DIR / "loadgen.py"), "--mqtt", mosq.url,
                 "--devices", str(devices), "--frames", str(frames), "--window", "7"],
                capture_output=True, text=True, timeout=60, check=True).stdout
            result = json.loads(bare.stdout.readline())
        finally:
            bare.kill()
            bare.wait()
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["event"] for e in events] == ["ready", "births_acked", "done"]
    assert events[-1]["messages"] == devices * frames
    assert result["messages"] == devices * frames


def test_process_cpu_is_read_from_proc() -> None:
    import os

    before = procstat.cpu(os.getpid())
    sum(i * i for i in range(2_000_000))
    assert procstat.cpu_since(before) > 0
    assert procstat.peak_rss_mb(os.getpid()) > 1


RAW_PROFILE = """\
thread (0x1): MainThread;run (/work/main/gateway/pipeline/stage.py:320);Pipeline.plan (/work/main/gateway/pipeline/stage.py:127);decode_telemetry (/work/main/device_protocol/telemetry.py:36) 6
thread (0x1): MainThread;run (/work/main/gateway/pipeline/stage.py:320);MqttIngest.ack (/work/main/gateway/ingest/mqtt.py:150);Client._sock_send (/x/site-packages/paho/mqtt/client.py:1102) 3
thread (0x2): mqtt-ingest;MqttIngest._run (/work/main/gateway/ingest/mqtt.py:180);Client._sock_recv (/x/site-packages/paho/mqtt/client.py:1086) 1
thread (0x2): mqtt-ingest;MqttIngest._run (/work/main/gateway/ingest/mqtt.py:180);Client._loop (/x/site-packages/paho/mqtt/client.py:1667) 40
thread (0x3): sqlite-writer_0;Thread.run (/usr/lib/python3.11/threading.py:982);_worker (/usr/lib/python3.11/concurrent/futures/thread.py:81) 50
"""  # noqa: E501


def test_profile_summary_counts_cpu_not_waiting(tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    raw.write_text(RAW_PROFILE)
    profile = profile_summary.load(raw)

    assert profile.total == 10 and profile.waiting == 90
    shares = profile_summary.by_category(profile)
    assert shares["telemetry validation (decode_telemetry)"] == 6
    assert shares["PUBACK (MqttIngest.ack -> paho)"] == 3  # not "paho receive path"
    assert shares["paho receive path (socket read, packet parse, on_message)"] == 1
    assert profile_summary.by_thread(profile) == {"MainThread": 9, "mqtt-ingest": 1}


def test_compacted_profile_reads_the_same(tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    raw.write_text(RAW_PROFILE)
    compact = tmp_path / "compact.txt"
    compact.write_text(profile_summary.compact(raw))

    full, small = profile_summary.load(raw), profile_summary.load(compact)
    assert profile_summary.by_category(full) == profile_summary.by_category(small)
    assert (full.total, full.waiting) == (small.total, small.waiting)
    assert ":36)" not in compact.read_text()  # line numbers dropped


def test_a_section_is_replaced_and_everything_else_kept(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text("# old single report\n\nstale figures\n\n" + results_file.NOTES_MARKER
                    + "\n## Notes\nhand-written\n")

    results_file.write_section(path, "drain", "## Drain\n\n| 1 |")
    results_file.write_section(path, "throughput", "## Throughput\n\nfirst")
    results_file.write_section(path, "throughput", "## Throughput\n\nsecond")

    text = path.read_text()
    assert "stale figures" not in text  # generated text outside any section is rewritten
    assert text.endswith(results_file.NOTES_MARKER + "\n## Notes\nhand-written\n")
    sections, notes = results_file.split(text)
    assert notes == "\n## Notes\nhand-written\n"
    assert sections == {"throughput": "## Throughput\n\nsecond", "drain": "## Drain\n\n| 1 |"}
    # throughput comes before drain whatever order they were written in
    assert text.index("## Throughput") < text.index("## Drain")


def test_a_section_cannot_smuggle_in_markers(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="marker"):
        results_file.write_section(tmp_path / "R.md", "x", "a\n<!-- end x -->\nb")
    with pytest.raises(ValueError, match="section name"):
        results_file.write_section(tmp_path / "R.md", "a b", "text")


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert stats.percentile(values, 50) == 50
    assert stats.percentile(values, 99) == 99
    assert stats.percentile(values, 100) == 100
    assert stats.percentile([3.0, 1.0, 2.0], 50) == 2  # order of input does not matter
    assert stats.percentile([7.0], 99) == 7
    with pytest.raises(ValueError):
        stats.percentile([], 50)


def test_medians_keep_agreeing_values_and_list_disagreeing_text() -> None:
    runs = [{"rate": 1.0, "n": 5, "note": "a"}, {"rate": 3.0, "n": 5, "note": "b"},
            {"rate": 2.0, "n": 5, "note": "a"}]
    assert stats.medians(runs) == {"rate": 2.0, "n": 5, "note": ["a", "b", "a"]}


def test_requests_for_vmagent_carry_every_sample_as_the_gateway_encodes_it() -> None:
    workload = loadgen.Workload(devices=3, frames=2, samples=4, base_ms=1_700_000_000_000)
    bodies = vmagent_peer.build_requests(workload, max_samples=10)
    decoded = [series for body in bodies
               for series in decode_write_request(decompress(body))]
    assert [len(decode_write_request(decompress(b))) for b in bodies] == [12, 12]
    assert decoded[5] == ({"__name__": "bench_m01", "device_id": "bench-00001"},
                          [(loadgen.sample_value(1, 0, 1), 1_700_000_000_000)])
    assert decoded[-1][1] == [(loadgen.sample_value(2, 1, 3), 1_700_000_001_000)]


def test_pacer_stamps_the_publish_time_into_a_prebuilt_packet() -> None:
    (packet, offset), = pacer.build_packets(devices=1, frames=1, samples=3)
    pacer.stamp(packet, offset, 1_800_000_000_123)
    at = packet.index(b"fleet/live-00000/telemetry") + len("fleet/live-00000/telemetry") + 2
    raw = decode_telemetry(bytes(packet[at:]))
    assert raw.time_ms == 1_800_000_000_123 and raw.seq == 0 and len(raw.samples) == 3


def test_pacer_schedule_never_runs_ahead_or_past_the_end() -> None:
    assert pacer.scheduled(-0.1, 1000, 50) == 0
    assert pacer.scheduled(0.0, 1000, 50) == 1  # the first frame goes at once
    assert pacer.scheduled(0.0105, 1000, 50) == 11
    assert pacer.scheduled(10.0, 1000, 50) == 50


def test_live_lateness_counts_from_the_first_publish_until_data_arrives() -> None:
    assert drain.lateness_s(110.0, None, first_publish_s=100.0) == 10.0
    assert drain.lateness_s(110.0, 108.5, first_publish_s=100.0) == 1.5
    # a live sample stamped a moment after the poll reads as 0, never negative
    assert drain.lateness_s(110.0, 110.2, first_publish_s=100.0) == 0.0


def test_recorded_requests_yield_each_live_sample_of_one_metric() -> None:
    from gateway.remote_write.series import SeriesEncoder
    from gateway.remote_write.wire import compress, encode_entry, encode_labels

    encoder = SeriesEncoder()

    def entry(device: str, metric: str, ts: int) -> bytes:
        prefix = encoder.series_prefix(device, metric, ())
        return prefix + struct.pack("<BdB", 0x09, 1.5, 0x10) + encode_varint(ts)

    other = encode_entry(encode_labels([("__name__", "bench_m00"), ("device_id", "x")]),
                         2.0, 1_700_000_000_000)
    body = compress(entry("live-00007", "bench_m00", 1_700_000_000_123)
                    + entry("live-00007", "bench_m01", 1_700_000_000_123)
                    + entry("bench-00001", "bench_m00", 1_700_000_000_456) + other
                    + entry("live-00042", "bench_m00", 1_700_000_000_789))
    ok = rw_recorder.Request(received=1.0, answered=2.0, status=204, body=body)
    refused = rw_recorder.Request(received=1.0, answered=2.0, status=400, body=body)
    pattern = rw_recorder.sample_pattern("bench_m00", "live-00000")

    found = [(device, ts) for device, ts, _ in rw_recorder.arrivals([ok, refused], pattern)]
    assert found == [(b"00007", 1_700_000_000_123), (b"00042", 1_700_000_000_789)]


def test_api_bench_fleet_varies_and_its_frames_decode() -> None:
    devices = [api_bench.plan_device(i, frames=4) for i in range(1000)]
    assert {d.platform for d in devices} == set(api_bench.PLATFORMS)
    assert {d.firmware for d in devices} == set(api_bench.FIRMWARES)
    assert {d.site for d in devices} == set(api_bench.SITES)
    gaps = [d for d in devices if d.missing]
    assert len(gaps) == 10 and {d.missing for d in gaps} == {1, 2, 3, 4, 5}
    assert all(len(d.seqs) == 4 and d.seqs[0] == 0 for d in devices)
    assert sum(d.dies for d in devices) == 10

    device = gaps[0]
    birth = decode_birth(api_bench.birth_payload(device, interval_ms=600_000, time_ms=1))
    assert (birth.platform, birth.firmware, birth.labels) == (
        device.platform, device.firmware, (("site", device.site),))
    raw = decode_telemetry(api_bench.telemetry_payload(device, device.seqs[1], 2))
    frame = resolve_telemetry(raw, birth)
    assert frame.seq == device.seqs[1] == 1 + device.missing
    assert len(frame.samples) == len(api_bench.SAMPLE_SERIES)


def test_api_bench_runs_small_and_writes_its_section(tmp_path: Path) -> None:
    """The whole script on a tiny fleet: every answer checks out and the section is written."""
    results = tmp_path / "RESULTS.md"
    done = subprocess.run([sys.executable, str(BENCH_DIR / "api.py"), "--devices", "300",
                           "--requests", "3", "--deep-pages", "2", "--results", str(results)],
                          timeout=120, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    sections, _ = results_file.split(results.read_text())
    section = sections["api"]
    assert section.startswith("## Operator API at 300 devices")
    assert "| `GET /healthz` (baseline: one HTTP round trip) |" in section
    assert "deep page: `?cursor=` after following next_cursor 2 times" in section


def _fake_tree(root: Path) -> Path:
    """A source tree whose gateway only says what it was asked to run."""
    (root / "gateway").mkdir(parents=True)
    (root / "device_protocol").mkdir()
    (root / "device_protocol" / "__init__.py").write_text("")
    (root / "gateway" / "__init__.py").write_text("")
    (root / "gateway" / "app.py").write_text("")
    (root / "gateway" / "cli.py").write_text(
        "def main(argv):\n    print('fake gateway', argv)\n    return 0\n")
    return root


def test_the_launcher_runs_the_gateway_of_the_tree_on_pythonpath_and_says_so(
        tmp_path: Path) -> None:
    tree = _fake_tree(tmp_path / "tree")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    done = subprocess.run(
        [sys.executable, str(BENCH_DIR / "gateway_launcher.py"), "as-is", "run"], cwd=elsewhere,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tree)}, capture_output=True, text=True,
        timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "fake gateway ['run']\n"
    line, = (x for x in done.stderr.splitlines()
             if x.startswith(gateway_launcher.PROVENANCE_PREFIX))
    said = json.loads(line.removeprefix(gateway_launcher.PROVENANCE_PREFIX))
    assert said == {"layer": "builtins", "gateway": str(tree / "gateway"),
                    "device_protocol": str(tree / "device_protocol"), "foreign": []}


def test_gateway_trees_name_two_trees_the_first_is_the_baseline_and_they_alternate(
        tmp_path: Path) -> None:
    old = _fake_tree(tmp_path / "old")
    comparison = tree_compare.parse_trees(f"before={old},after={BENCH_DIR.parent}")
    assert comparison.names == ("before", "after")
    assert comparison.baseline.tree == old and comparison.subject.tree == BENCH_DIR.parent
    assert [[v.name for v in comparison.order(i)] for i in range(3)] == [
        ["before", "after"], ["after", "before"], ["before", "after"]]
    for bad in (f"before={old}", f"a={old},a={old}", f"before={tmp_path},after={old}",
                f"{old},after={old}"):
        with pytest.raises(argparse.ArgumentTypeError):
            tree_compare.parse_trees(bad)


def test_a_difference_counts_only_when_the_interval_of_the_mean_ratio_excludes_1() -> None:
    cpu = same_run.Figure("cpu", "CPU", "µs", 1, lower_is_better=True)
    rate = same_run.Figure("rate", "rate", "", 0, lower_is_better=False)
    steady_rise = [1.20, 1.22, 1.21, 1.23]
    assert "worse beyond" in same_run.noise_verdict(steady_rise, cpu)
    assert "better beyond" in same_run.noise_verdict(steady_rise, rate)
    assert "within the noise" in same_run.noise_verdict([0.85, 1.2, 0.95, 1.1], cpu)
    assert "one repeat" in same_run.noise_verdict([1.5], cpu)
    runs = {"before": [{"cpu": 50.0}, {"cpu": 60.0}], "after": [{"cpu": 55.0}, {"cpu": 54.0}]}
    comparison = same_run.Comparison(same_run.Variant("before"), same_run.Variant("after"),
                                     first="after")
    assert same_run.ratios(comparison, runs, cpu) == [1.1, 0.9]
    assert [row.split(" | ")[1] for row in same_run.case_table(comparison, runs, [cpu])[2:]] == [
        "after", "before"]


def test_mqtt_tls_transports_start_from_plain_and_rotate(tmp_path: Path) -> None:
    transports = tls_compare.parse_transports("plain,tls,tls-stock")
    assert [(t.name, t.tls, t.fast_path) for t in transports] == [
        ("plain", False, True), ("tls", True, True), ("tls-stock", True, False)]
    assert [[t.name for t in tls_compare.order(transports, i)] for i in range(4)] == [
        ["plain", "tls", "tls-stock"], ["tls", "tls-stock", "plain"],
        ["tls-stock", "plain", "tls"], ["plain", "tls", "tls-stock"]]
    for bad in ("tls,tls-stock", "plain", "plain,tls,tls", "plain,ssl"):
        with pytest.raises(argparse.ArgumentTypeError):
            tls_compare.parse_transports(bad)
    runs = {"plain": [{"cpu_us_per_frame": 50.0}, {"cpu_us_per_frame": 40.0}],
            "tls": [{"cpu_us_per_frame": 60.0}, {"cpu_us_per_frame": 52.0}]}
    assert tls_compare.ratios(runs, "tls", tls_compare.CPU) == [1.2, 1.3]


def test_the_tls_broker_is_reached_verified_over_mqtts_and_plain_beside_it(
        tmp_path: Path) -> None:
    pki = tls_compare.issue_pki(tmp_path / "pki")
    tls, stock = tls_compare.TRANSPORTS["tls"], tls_compare.TRANSPORTS["tls-stock"]
    with tls_compare.TlsMosquitto(tmp_path / "mosquitto", pki) as mosq:
        url, settings = tls_compare.gateway_connection(stock, mosq, pki)
        assert url == f"mqtts://127.0.0.1:{mosq.tls_port}"
        assert settings == {"mqtt_fast_path": "false", "mqtt_ca_file": str(pki.ca)}
        assert tls_compare.gateway_connection(tls_compare.TRANSPORTS["plain"], mosq, pki) == (
            mosq.url, {"mqtt_fast_path": "true"})
        with pytest.raises(ValueError):
            tls_compare.gateway_connection(tls, Mosquitto(tmp_path / "plain"), None)
    assert tls_compare.negotiated(pki, tmp_path / "probe").startswith("TLSv1.3, ")
