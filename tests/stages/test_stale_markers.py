"""Stale markers when a boot ends (issue 11, findings 5 and 9): every series the boot reported -
histogram buckets, series with labels of their own, undeclared gauges, not only the last frame's
- gets one, 1 ms after the boot's newest sample; also when the death and the next boot's birth
arrive in the same millisecond, and also after a gateway restart. They are committed in arrival
order: after the boot's own frames, before the next boot's.

Frames are built by hand with msgpack from docs/protocol.md."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import msgpack
import pytest

import tests.support.factories as f
from device_protocol import decode_birth, encode_birth
from gateway.buffer import store
from gateway.remote_write.wire import decode_write_request, is_stale_nan, split_entries
from tests.support.pipeline_harness import Harness, birth_msg, msg, run

DEVICE = f.device_id(1)
BASE = 0  # set per test: a boot older than the 5-minute lookback gets no markers at all


@pytest.fixture(autouse=True)
def recent_base() -> None:
    """Frames 30 s old when the test runs (not when the module was collected: the whole
    suite takes longer than the lookback)."""
    global BASE
    BASE = f.now_ms() - 30_000
BOOT = f.boot_id(1)
NEXT_BOOT = f.boot_id(1, reboot=1)


def telemetry(seq: int, samples: list[list[object]], boot: int = BOOT) -> object:
    return msg(f"fleet/{DEVICE}/telemetry", msgpack.packb(
        {"v": 1, "b": boot, "s": seq, "t": BASE + 1_000 * seq, "m": samples}))


def death(boot: int = BOOT) -> object:
    return msg(f"fleet/{DEVICE}/death", msgpack.packb({"v": 1, "b": boot, "t": BASE}))


# alias 0: a gauge; 1: a counter; 2: a histogram (0.01, 0.1, 1.0); "fan_rpm": undeclared
FIRST = [[0, 21.0, 0, {"core": "0"}], [0, 22.0, 0, {"core": "1"}], [1, 5],
         [2, [3, 0.2, [1, 1, 1]]], ["fan_rpm", 1200]]
LAST = [[0, 23.0, 0, {"core": "0"}]]  # the last frame reports one series only


def series_of(h: Harness, kind: int) -> list[tuple[dict[str, str], list[tuple[float, int]]]]:
    payloads = h.rows(f"SELECT payload FROM frames WHERE kind = {kind} ORDER BY id")
    return [s for (payload,) in payloads for s in decode_write_request(
        b"".join(split_entries(payload)))]


def written_series(h: Harness) -> set[frozenset[tuple[str, str]]]:
    """Every series the boot's telemetry wrote, from the frames as a forwarder encodes them."""
    out = set()
    for frame_id in range(1, h.buffer.committed_upto + 1):
        for labels, samples in decode_write_request(b"".join(h.cache.get(frame_id) or [])):
            if not any(is_stale_nan(v) for v, _ in samples) and labels["__name__"] != (
                    "fleet_device_info"):
                out.add(frozenset(labels.items()))
    return out


def all_markers(h: Harness) -> dict[frozenset[tuple[str, str]], int]:
    out = {}
    for labels, samples in series_of(h, store.KIND_ENTRIES):
        for value, ts in samples:
            assert is_stale_nan(value)
            out[frozenset(labels.items())] = ts
    return out


def markers(h: Harness) -> dict[frozenset[tuple[str, str]], int]:
    """The markers of the device's own series."""
    return {k: ts for k, ts in all_markers(h).items()
            if dict(k)["__name__"] != "fleet_device_info"}


def info_markers(h: Harness) -> dict[str, int]:
    """firmware -> the marker of that fleet_device_info series."""
    return {dict(k)["firmware"]: ts for k, ts in all_markers(h).items()
            if dict(k)["__name__"] == "fleet_device_info"}


def info_samples(h: Harness) -> list[tuple[str, int]]:
    """(firmware, time) of every fleet_device_info sample queued, in order: one per birth frame
    in the buffer, at the birth's arrival."""
    return [(decode_birth(payload).firmware, received_ms) for payload, received_ms in h.rows(
        "SELECT payload, received_ms FROM frames WHERE kind = 1 ORDER BY id")]


def test_a_death_closes_every_series_of_the_boot(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")

    async def go() -> None:
        p = await h.open()
        await p.handle([birth_msg(1), telemetry(0, FIRST), telemetry(1, LAST)])
        written = written_series(h)
        await p.handle([death()._replace(received_ms=f.now_ms() + 1_000)])  # type: ignore[attr-defined]
        assert set(markers(h)) == written
        assert len(written) == 2 + 1 + 4 + 2 + 1  # gauges, counter, buckets+Inf, sum/count, rpm
        assert set(markers(h).values()) == {BASE + 1_000 + 1}
        await h.db.close()

    run(go)
    assert h.counter("fleetgate_stale_markers_total") == 10 + 1  # and fleet_device_info


def test_a_death_and_the_next_birth_in_the_same_millisecond(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    next_birth = msg(f"fleet/{DEVICE}/birth", f.birth_payload(1, reboot=1, time_ms=BASE + 5_000))

    async def go() -> None:
        p = await h.open()
        await p.handle([birth_msg(1, time_ms=BASE - 1_000), telemetry(0, FIRST)])
        written = written_series(h)
        same_ms = [death(), next_birth, telemetry(0, [[0, 30.0, 0, {"core": "0"}]],
                                                  boot=NEXT_BOOT)]
        at = same_ms[0].received_ms  # type: ignore[attr-defined]
        await p.handle([m._replace(received_ms=at) for m in same_ms])  # type: ignore[attr-defined]
        assert set(markers(h)) == written
        await h.db.close()

    run(go)
    kinds = [k for (k,) in h.rows("SELECT kind FROM frames ORDER BY id")]
    # birth, telemetry, markers, new birth, new telemetry: the markers precede the new boot's
    assert kinds == [store.KIND_BIRTH, store.KIND_TELEMETRY, store.KIND_ENTRIES,
                     store.KIND_BIRTH, store.KIND_TELEMETRY]


def test_a_reboot_without_a_death_closes_the_previous_boot(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")

    async def go() -> None:
        p = await h.open()
        await p.handle([birth_msg(1, time_ms=BASE - 1_000), telemetry(0, FIRST)])
        written = written_series(h)
        await p.handle([msg(f"fleet/{DEVICE}/birth",
                            f.birth_payload(1, reboot=1, time_ms=BASE + 5_000))])
        assert set(markers(h)) == written
        await h.db.close()

    run(go)


def test_after_a_restart_an_offline_timeout_closes_every_series(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    written: set[frozenset[tuple[str, str]]] = set()

    async def go() -> None:
        p = await h.open()
        await p.handle([birth_msg(1), telemetry(0, FIRST), telemetry(1, LAST)])
        written.update(written_series(h))
        await h.db.close()
        h.cache._frames.clear()  # type: ignore[attr-defined]
        p = await h.open()  # a restart: nothing in memory knows the boot's series
        markers_queued = await p.close_boot(DEVICE, BOOT, lambda: True)
        assert markers_queued == len(written) + 1  # and its fleet_device_info
        assert await p.close_boot(DEVICE, BOOT, lambda: False) == 0  # came back meanwhile
        await h.db.close()

    run(go)
    assert set(markers(h)) == written


def test_a_death_of_a_past_boot_closes_nothing(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")

    async def go() -> None:
        p = await h.open()
        await p.handle([birth_msg(1, time_ms=BASE - 1_000), telemetry(0, FIRST),
                        msg(f"fleet/{DEVICE}/birth",
                            f.birth_payload(1, reboot=1, time_ms=BASE + 5_000)),
                        telemetry(0, LAST, boot=NEXT_BOOT)])
        closed = len(markers(h))
        await p.handle([death(BOOT)])  # the old connection's Will, delivered late
        assert len(markers(h)) == closed
        await h.db.close()

    run(go)


def test_the_info_series_of_a_boot_ends_between_its_info_and_the_next_boots(
        tmp_path: Path) -> None:
    """Found by the spec suite: a reboot into new firmware starts a new fleet_device_info
    series; the old one must be closed (else `count by (firmware)` counts the device twice for
    five minutes), also when the death and the next birth share a millisecond."""
    h = Harness(tmp_path / "db")
    new_firmware = replace(f.birth(1, reboot=1, time_ms=BASE + 5_000), firmware="3.0.0")

    async def go() -> None:
        p = await h.open()
        await p.handle([birth_msg(1, time_ms=BASE - 1_000), telemetry(0, FIRST)])
        same_ms = [death(), msg(f"fleet/{DEVICE}/birth", encode_birth(new_firmware))]
        at = same_ms[0].received_ms + 5  # type: ignore[attr-defined]
        await p.handle([m._replace(received_ms=at) for m in same_ms])  # type: ignore[attr-defined]
        await h.db.close()

    run(go)
    (old, old_ms), (new, new_ms) = info_samples(h)
    assert (old, new) == ("2.1.0", "3.0.0")
    assert old_ms < info_markers(h)["2.1.0"] < new_ms
    assert "3.0.0" not in info_markers(h)


def test_a_boot_that_only_said_its_birth_closes_its_info_series(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")

    async def go() -> None:
        p = await h.open()
        born = birth_msg(1)
        await p.handle([born])
        await p.handle([death()._replace(received_ms=born.received_ms + 1_000)])  # type: ignore[attr-defined]
        await h.db.close()

    run(go)
    assert set(info_markers(h)) == {"2.1.0"} and markers(h) == {}


def test_a_reboot_onto_a_clock_set_back_leaves_the_old_series_to_the_lookback(
        tmp_path: Path) -> None:
    """Found by the spec suite: the new boot's clock reads earlier than the old boot's newest
    sample (stepped back at boot). Markers at old newest + 1 ms would come after the new
    boot's samples of the same series, which a receiver refuses as out of order: none are made
    for the device's series; its info series still ends."""
    h = Harness(tmp_path / "db")

    async def go() -> None:
        p = await h.open()
        await p.handle([birth_msg(1, time_ms=BASE - 1_000), telemetry(0, FIRST)])
        reboot = msg(f"fleet/{DEVICE}/birth", f.birth_payload(1, reboot=1, time_ms=BASE - 50))
        await p.handle([reboot._replace(received_ms=f.now_ms() + 1_000)])  # type: ignore[attr-defined]
        await h.db.close()

    run(go)
    assert markers(h) == {}
    assert set(info_markers(h)) == {"2.1.0"}


def test_a_boot_closed_before_a_restart_is_not_closed_again_by_its_late_will(
        tmp_path: Path) -> None:
    """Found by the model-based test: closed boots were remembered in memory only, so a Will
    redelivered after a restart closed the boot again and its markers (perhaps refused with a
    400 the first time) were sent a second time."""
    h = Harness(tmp_path / "db")

    async def go() -> None:
        p = await h.open()
        await p.handle([birth_msg(1), telemetry(0, FIRST)])
        assert await p.close_boot(DEVICE, BOOT, lambda: True)  # an offline timeout
        await h.db.close()
        p = await h.open()
        await p.handle([death()._replace(received_ms=f.now_ms() + 1_000)])  # type: ignore[attr-defined]
        await h.db.close()

    run(go)
    assert len(h.rows(f"SELECT id FROM frames WHERE kind = {store.KIND_ENTRIES}")) == 1
