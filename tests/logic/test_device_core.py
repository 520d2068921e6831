"""fleetgate_device's sans-I/O core: what it publishes, decoded by the gateway's own codec.

The core has its own msgpack encoder; `device_protocol` (the decoder the gateway runs) reads
every payload here, so an encoder that drifted from the protocol fails these tests.
"""

from __future__ import annotations

import pytest

from device_protocol import (
    HistogramSample,
    MetricType,
    decode_birth,
    decode_death,
    decode_telemetry,
    resolve_telemetry,
)
from fleetgate_device import DeviceCore, HistogramValue, Publish, Sample

T0 = 1_790_000_000_000
STATE = "fleet/_gateway/gw-1/state"
ONLINE, OFFLINE = b"\x81\xa6online\xc3", b"\x81\xa6online\xc2"


def core(**kwargs: object) -> DeviceCore:
    args: dict[str, object] = {"hw": "raspberry-pi-5", "fw": "1.4.2", "interval_ms": 10_000,
                               "labels": {"site": "lab"}, "boot": 0xDEADBEEF}
    args.update(kwargs)
    return DeviceCore("pi-07", **args)  # type: ignore[arg-type]


def temp(v: float) -> list[Sample]:
    return [Sample("board_temp_c", v)]


def kinds(out: list[Publish]) -> list[str]:
    return [p.topic.rsplit("/", 1)[1] for p in out]


def test_birth_telemetry_and_death_decode_with_the_gateway_codec() -> None:
    c = core()
    assert c.subscriptions == ["fleet/pi-07/cmd", "fleet/_gateway/+/state"]
    out = c.on_connect(T0)
    assert kinds(out) == ["birth"] and out[0].topic == "fleet/pi-07/birth"
    samples = [
        Sample("board_temp_c", 41.5),
        Sample("inferences_total", 7, {"model": "lnn"}, kind="counter"),
        Sample("latency_ms", HistogramValue(4, 30.0, (1, 3)), kind="histogram", bounds=(5, 10)),
    ]
    out = c.telemetry(T0 + 10, samples)
    assert kinds(out) == ["birth", "telemetry"]  # the new declarations first
    birth = decode_birth(out[0].payload, now_ms=T0)
    assert (birth.boot, birth.platform, birth.firmware, birth.interval_ms) == \
        (0xDEADBEEF, "raspberry-pi-5", "1.4.2", 10_000)
    assert dict(birth.labels) == {"site": "lab"}
    assert [(m.alias, m.name, m.type, m.bounds) for m in birth.metrics] == [
        (0, "board_temp_c", MetricType.GAUGE, ()),
        (1, "inferences_total", MetricType.COUNTER, ()),
        (2, "latency_ms", MetricType.HISTOGRAM, (5.0, 10.0))]
    raw = decode_telemetry(out[1].payload, now_ms=T0)
    assert (raw.boot, raw.seq, raw.time_ms, raw.historical) == (0xDEADBEEF, 0, T0 + 10, False)
    got = resolve_telemetry(raw, birth).samples
    assert [(s.name, dict(s.labels)) for s in got] == [
        ("board_temp_c", {"site": "lab"}), ("inferences_total", {"site": "lab", "model": "lnn"}),
        ("latency_ms", {"site": "lab"})]
    counter = got[1]
    assert not isinstance(counter, HistogramSample)
    assert counter.value == 7.0 and isinstance(counter.value, float)
    hist = got[2]
    assert isinstance(hist, HistogramSample)
    assert hist.buckets == ((5.0, 1.0), (10.0, 3.0), (float("inf"), 4.0))
    assert decode_death(c.death().payload).boot == 0xDEADBEEF
    assert out[1].frame == (0xDEADBEEF, 0, False) and out[1].qos == 1 and not out[1].retain


def test_values_are_float64() -> None:
    c = core()
    c.on_connect(T0)
    big = 2**53 - 1  # needs more than float32's 24 bits
    (_, frame) = c.telemetry(T0, [Sample("bytes_total", big, kind="counter")])
    assert b"\xcb" in frame.payload
    assert decode_telemetry(frame.payload).samples[0].value == float(big)


def test_seq_counts_live_and_ringed_frames_and_births_do_not() -> None:
    c = core()
    c.on_connect(T0)
    c.telemetry(T0, temp(1))
    c.on_disconnect()
    assert c.telemetry(T0 + 1, temp(2)) == []  # ringed
    out = c.on_connect(T0 + 2)
    out += c.on_message("fleet/pi-07/cmd", b"\x81\xa7rebirth\xc3", T0 + 3)
    out += c.telemetry(T0 + 4, temp(3))
    frames = [decode_telemetry(p.payload) for p in out if p.frame]
    assert [(f.seq, f.historical, f.time_ms) for f in frames] == [
        (1, True, T0 + 1), (2, False, T0 + 4)]
    assert kinds(out) == ["birth", "telemetry", "birth", "telemetry"]
    assert {decode_birth(p.payload).boot for p in out if p.frame is None} == {0xDEADBEEF}


def test_a_declaration_added_mid_boot_comes_with_a_new_birth_that_keeps_the_old_aliases() -> None:
    c = core()
    c.on_connect(T0)
    first = c.telemetry(T0, temp(20))
    assert kinds(first) == ["birth", "telemetry"]
    assert kinds(c.telemetry(T0 + 1, temp(21))) == ["telemetry"]
    out = c.telemetry(T0 + 2, [*temp(22), Sample("fan_rpm", 900)])
    assert kinds(out) == ["birth", "telemetry"]
    rebirth = decode_birth(out[0].payload)
    assert [(m.alias, m.name) for m in rebirth.metrics] == [(0, "board_temp_c"), (1, "fan_rpm")]
    # Frames of the boot decode under any of its births.
    old = resolve_telemetry(decode_telemetry(first[1].payload), rebirth)
    assert [s.name for s in old.samples] == ["board_temp_c"]
    assert c.declare("board_temp_c") == 0


def test_conflicting_declarations_and_reserved_labels_are_refused() -> None:
    c = core()
    c.telemetry(T0, [Sample("x", 1.0)])
    with pytest.raises(ValueError, match="x"):
        c.telemetry(T0, [Sample("x", 1.0, kind="counter")])
    c.declare("h", "histogram", (1, 2))
    with pytest.raises(ValueError, match="h"):
        c.declare("h", "histogram", (1, 3))
    with pytest.raises(ValueError, match="device_id"):
        c.telemetry(T0, [Sample("y", 1.0, {"device_id": "pi-07"})])
    with pytest.raises(ValueError, match="device_id"):
        core(labels={"device_id": "x"})
    with pytest.raises(ValueError):
        c.telemetry(T0, [Sample("z", float("nan"))])
    with pytest.raises(ValueError):
        c.telemetry(T0, [Sample("bad name", 1.0)])
    with pytest.raises(ValueError):
        DeviceCore("-bad", hw="h", fw="f", interval_ms=1)


def test_replay_is_paced_by_acknowledgements() -> None:
    c = core(max_in_flight=2)
    for i in range(5):
        c.telemetry(T0 + i, temp(i))
    assert (c.waiting, c.stats.ringed) == (5, 5)
    out = c.on_connect(T0 + 10)
    assert kinds(out) == ["birth", "telemetry", "telemetry"]
    assert [p.frame for p in out[1:]] == [(0xDEADBEEF, 0, True), (0xDEADBEEF, 1, True)]
    assert c.in_flight == 2 and c.waiting == 3
    live = c.telemetry(T0 + 11, temp(9))
    assert [p.frame for p in live] == [(0xDEADBEEF, 5, False)]  # live goes beside the replay
    assert c.on_ack(live[0]) == []  # a live frame's ack paces nothing
    nxt = c.on_ack(out[1])
    assert [p.frame for p in nxt] == [(0xDEADBEEF, 2, True)]
    c.on_disconnect()
    assert c.on_ack(out[2]) == []  # offline: acknowledged, but nothing more goes out
    more = c.on_connect(T0 + 20)  # seq 2 is still in flight (the transport resends it)
    assert [p.frame for p in more if p.frame] == [(0xDEADBEEF, 3, True)]
    replayed = decode_telemetry(more[1].payload)
    assert replayed.historical and replayed.time_ms == T0 + 3
    assert [p.frame for p in c.on_ack(nxt[0])] == [(0xDEADBEEF, 4, True)]
    assert c.stats.replayed == 5 and c.waiting == 0


def test_a_full_ring_drops_the_oldest_and_counts() -> None:
    c = core(ring_size=3)
    for i in range(5):
        c.telemetry(T0 + i, temp(i))
    assert (c.stats.ringed, c.stats.dropped, c.waiting) == (5, 2, 3)
    out = c.on_connect(T0 + 9)
    assert [p.frame.seq for p in out if p.frame] == [2, 3, 4]
    zero = core(ring_size=0)
    zero.telemetry(T0, temp(1))
    assert (zero.stats.dropped, zero.waiting) == (1, 0)


def test_gateway_state_offline_rings_and_online_rebirths_and_replays() -> None:
    c = core()
    c.on_connect(T0)
    # The retained state every subscribe delivers records the state, without a second birth.
    assert c.on_message(STATE, ONLINE, T0, retained=True) == []
    assert c.on_message(STATE, OFFLINE, T0 + 1) == []
    assert not c.online
    assert c.telemetry(T0 + 2, temp(1)) == []
    out = c.on_message(STATE, ONLINE, T0 + 3)
    assert kinds(out) == ["birth", "telemetry"]
    assert out[1].frame == (0xDEADBEEF, 0, True)
    assert c.on_message("fleet/_gateway/gw-1/other", OFFLINE, T0) == []
    assert c.on_message(STATE, b"\xc1", T0) == [] and c.online  # unreadable: ignored
    assert c.on_message("fleet/pi-07/cmd", b"\x81\xa7rebirth\xc2", T0) == []


def test_a_pinned_gateway_ignores_the_others() -> None:
    c = core(gateway_id="gw-2")
    assert c.subscriptions[1] == "fleet/_gateway/gw-2/state"
    c.on_connect(T0)
    c.on_message(STATE, OFFLINE, T0)
    assert c.online


def test_reboot_is_a_new_boot_from_seq_zero_and_loses_the_ram_ring() -> None:
    c = core()
    for i in range(3):
        c.telemetry(T0 + i, temp(i))
    c.reboot()
    assert c.boot != 0xDEADBEEF and c.seq == 0 and c.declarations == 0
    assert (c.stats.lost_on_reboot, c.waiting) == (3, 0)
    out = c.on_connect(T0 + 9)
    assert kinds(out) == ["birth"]


def test_boot_ids_are_drawn_at_random() -> None:
    boots = {DeviceCore("d", hw="h", fw="f", interval_ms=1).boot for _ in range(100)}
    assert len(boots) == 100
