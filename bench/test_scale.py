"""Checks of bench/scale.py's own tools (not part of `make test`; seconds):

    .venv/bin/pytest bench/test_scale.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import loadgen
import msgpack
import pytest
import scale_gen
import scale_report

from device_protocol import (
    decode_birth,
    decode_telemetry,
    decode_telemetry_rows,
    resolve_telemetry,
)
from devstack import Mosquitto

BENCH_DIR = Path(__file__).resolve().parent


def _payload_of(packet: bytes, topic: bytes) -> tuple[int, bytes]:
    """(packet id, payload) of a QoS 1 PUBLISH on `topic`."""
    assert packet[0] == 0x32
    length, at = 0, 1
    for shift in range(0, 28, 7):
        byte = packet[at]
        at += 1
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
    assert length == len(packet) - at
    topic_len = int.from_bytes(packet[at:at + 2], "big")
    assert packet[at + 2:at + 2 + topic_len] == topic
    body = packet[at + 2 + topic_len:]
    return int.from_bytes(body[:2], "big"), body[2:]


@pytest.mark.parametrize(("seq", "time_ms"), [(0, 0), (1, 1_700_000_000_123),
                                              (2**32 - 1, 2**63 - 1)])
def test_a_patched_template_is_the_frame_the_encoder_would_build(seq: int, time_ms: int) -> None:
    template = scale_gen.telemetry_template(device=7, samples=20)
    topic = b"fleet/" + scale_gen.device_id(7).encode() + b"/telemetry"
    packet_id, payload = _payload_of(template.packet(65_535, seq, time_ms), topic)

    assert packet_id == 65_535
    rows = decode_telemetry_rows(payload)
    assert (rows.boot, rows.seq, rows.time_ms) == (scale_gen.BOOT, seq, time_ms)
    assert [(r[0], r[1]) for r in rows.rows] == [
        (m, loadgen.sample_value(7, 0, m)) for m in range(20)]
    # The same values as a freshly encoded frame (msgpack reads the fixed-width ints as ints).
    assert msgpack.unpackb(payload) == {"v": 1, "b": scale_gen.BOOT, "s": seq, "t": time_ms,
                                        "m": [[m, loadgen.sample_value(7, 0, m)]
                                              for m in range(20)]}


def test_a_template_frame_resolves_against_the_generators_birth() -> None:
    birth = decode_birth(scale_gen.birth_payload(samples=3, interval_ms=10_000, time_ms=5))
    assert birth.interval_ms == 10_000
    payload = _payload_of(scale_gen.telemetry_template(0, 3).packet(1, 4, 9_000),
                          b"fleet/bench-000000/telemetry")[1]
    frame = resolve_telemetry(decode_telemetry(payload), birth)
    assert [s.name for s in frame.samples] == [loadgen.metric_name(m) for m in range(3)]


def test_round_robin_gives_the_first_devices_the_extra_frames() -> None:
    assert scale_gen.frames_per_device(7, 3) == [3, 2, 2]
    assert scale_gen.frames_per_device(6, 3) == [2, 2, 2]
    assert sum(scale_gen.frames_per_device(100_003, 1_000)) == 100_003


def test_pacing_is_due_one_frame_at_the_start_and_rate_per_second_after() -> None:
    assert scale_gen.due_frames(-0.1, 100) == 0
    assert scale_gen.due_frames(0.0, 100) == 1
    assert scale_gen.due_frames(1.0, 100) == 101
    assert scale_gen.due_frames(10.0, 10_000) == 100_001


def test_percentiles_of_latencies_are_nearest_rank_and_say_when_there_are_none() -> None:
    values = [0.5, 0.1, 0.3, 0.2, 0.4]
    assert scale_report.spread(values) == {"p50": 0.3, "p99": 0.5, "max": 0.5, "n": 5}
    assert scale_report.spread([]) == {"p50": None, "p99": None, "max": None, "n": 0}


def test_the_bytes_per_device_slope_is_a_least_squares_fit() -> None:
    # 100 MB + 1 kB per device, exactly: the slope is 1 kB whatever the points.
    points = [(n, 100e6 + 1000 * n) for n in (1_000, 10_000, 100_000)]
    assert scale_report.slope(points) == pytest.approx(1000)
    assert scale_report.slope([(1_000, 5.0)]) is None


def test_the_generator_publishes_births_bursts_paced_frames_and_deaths(tmp_path: Path) -> None:
    """Through a real broker: every packet acknowledged; a subscriber sees each one once."""
    devices = 30
    with Mosquitto(tmp_path / "mosquitto") as mosq:
        sub = subprocess.Popen(
            [sys.executable, str(BENCH_DIR / "bare_subscriber.py"), "--mqtt", mosq.url,
             "--count", str(devices * 3)], stdout=subprocess.PIPE, text=True)
        gen = subprocess.Popen(
            [sys.executable, str(BENCH_DIR / "scale_gen.py"), "--mqtt", mosq.url,
             "--devices", str(devices), "--connections", "3", "--samples", "4"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert sub.stdout is not None and gen.stdin is not None and gen.stdout is not None
            assert sub.stdout.readline().strip() == "ready"
            assert json.loads(gen.stdout.readline())["event"] == "ready"

            def ask(command: str) -> dict[str, object]:
                assert gen.stdin is not None and gen.stdout is not None
                gen.stdin.write(command + "\n")
                gen.stdin.flush()
                return dict(json.loads(gen.stdout.readline()))

            assert ask("births")["acked"] == devices
            burst = ask("burst 2")
            assert (burst["sent"], burst["acked"]) == (2 * devices, 3 * devices)
            gen.stdin.write("pace 200\n")
            gen.stdin.flush()
            got = sub.stdout.readline()  # the subscriber has had 3 frames per device
            paced = ask("dark 0.2")
            assert paced["event"] == "paced"
            sent = int(paced["sent"])  # type: ignore[call-overload]
            deaths = json.loads(gen.stdout.readline())
            assert deaths["what"] == "deaths"
            assert deaths["acked"] == deaths["packets"] == devices * 4 + sent
            gen.stdin.write("stop\n")
            gen.stdin.flush()
            assert gen.wait(timeout=10) == 0
        finally:
            for proc in (sub, gen):
                proc.kill()
                proc.wait()
    assert json.loads(got)["messages"] == devices * 3
    assert sent >= devices  # the 3rd round reached the subscriber (it counts telemetry only)


def test_the_default_run_is_the_issues_figures_and_quick_is_small() -> None:
    import scale

    full = scale.parse_args([])
    assert full.cpu_workloads == [(1000, 60), (10000, 12), (100000, 3)]
    assert (full.sustain_devices, full.sustain_s, full.dark_devices) == (100_000, 600, 100_000)
    assert full.phases == ["cpu", "memory", "sustain", "dark", "drain"]
    quick = scale.parse_args(["--quick", "--only", "cpu,dark", "--sustain-s", "5"])
    assert max(d for d, _ in quick.cpu_workloads) <= 30_000
    assert (quick.dark_devices, quick.sustain_s, quick.phases) == (30_000, 5, ["cpu", "dark"])
    with pytest.raises(SystemExit):
        scale.parse_args(["--only", "cpu,speed"])


def test_a_failed_phase_is_reported_as_failed_and_the_others_still_are() -> None:
    machine = {"date": "today", "commit": "abc", "cpus": "2", "cpu_model": "x",
               "memory": "1 GiB"}
    cpu = {n: {"devices": n, "frames": 3, "series": n * 20, "birth_us_per_device": 100.0,
               "first_us_per_frame": 150.0, "later_us_per_frame": us,
               "broker_us_per_frame": 8.0, "vm_us_per_frame": 20.0, "rss_mb": rss,
               "lost_samples": 0} for n, us, rss in ((1000, 60.0, 100.0), (100_000, 90.0, 199.0))}
    text = scale_report.markdown(command="c", machine=machine, cpu=cpu, phases={},
                                 failures={"sustain": "sustain: TimeoutError: stalled"},
                                 repeats=1, samples=20, settings={}, load="load 1")
    assert "**Phases that FAILED: sustain**" in text
    assert "**sustain: FAILED** — sustain: TimeoutError: stalled" in text
    assert "**missed** (1.50x)" in text  # 90 / 60 µs: the flat-cost goal
    assert "1,049 bytes per device" in text  # (199 - 100) MiB / 99,000 devices = 1,048.6 B


def test_a_booting_fleet_sends_each_birth_just_before_its_first_frame(tmp_path: Path) -> None:
    devices = 20
    with Mosquitto(tmp_path / "mosquitto") as mosq:
        gen = subprocess.Popen(
            [sys.executable, str(BENCH_DIR / "scale_gen.py"), "--mqtt", mosq.url,
             "--devices", str(devices), "--connections", "2", "--samples", "2"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert gen.stdin is not None and gen.stdout is not None
            assert json.loads(gen.stdout.readline())["event"] == "ready"
            gen.stdin.write("pace 400 births\n")
            gen.stdin.flush()
            time.sleep(0.3)  # pacing runs until told otherwise: let some frames go
            gen.stdin.write("silence\n")
            gen.stdin.flush()
            paced = json.loads(gen.stdout.readline())
            assert json.loads(gen.stdout.readline())["event"] == "silent"
        finally:
            gen.kill()
            gen.wait()
    sent = paced["sent"]
    assert sent > devices  # more than one round at 400/s in 0.3 s
    assert paced["packets"] == paced["acked"] == devices + sent  # a birth per device, once
