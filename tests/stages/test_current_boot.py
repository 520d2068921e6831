"""Which boot is current (issue 11, finding 3): the boot of the birth with the latest device clock
`t`, then the latest arrival. A birth of a boot the gateway knows as past - redelivered by a
broker after a restart, replayed, or late - must not move the device back: not its firmware, not
its state, not fleet_device_info, and no `reboot` event. Births in every order, across restarts.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import msgpack
import pytest

import tests.support.factories as f
from device_protocol import decode_birth, encode_birth
from gateway.buffer import store
from tests.support.pipeline_harness import Harness, msg, run

DEVICE = f.device_id(1)
T = f.now_ms() - 120_000
OLD = replace(f.birth(1, reboot=0, time_ms=T), firmware="1.0.0")
NEW = replace(f.birth(1, reboot=1, time_ms=T + 60_000), firmware="2.0.0")


def birth_message(birth: object) -> object:
    return msg(f"fleet/{DEVICE}/birth", encode_birth(birth))  # type: ignore[arg-type]


def info_firmwares(h: Harness) -> list[str]:
    """The firmware of every fleet_device_info the gateway queued for the receivers, in order
    (each birth frame in the buffer is one fleet_device_info sample)."""
    return [decode_birth(payload).firmware
            for (payload,) in h.rows("SELECT payload FROM frames WHERE kind = 1 ORDER BY id")]


ORDERS = sorted(set(itertools.permutations(["old", "new", "old", "new"])))


@pytest.mark.parametrize("order", ORDERS, ids="-".join)
@pytest.mark.parametrize("restart_after", [None, 1, 2])
def test_a_past_boot_birth_never_moves_the_device_back(
        tmp_path: Path, order: tuple[str, ...], restart_after: int | None) -> None:
    births = {"old": OLD, "new": NEW}
    h = Harness(tmp_path / "db")
    events = []

    async def go() -> None:
        p = await h.open()
        for i, name in enumerate(order):
            if i == restart_after:  # a restart: births, current boot and fleet from SQLite
                fleet_rows = p._fleet.take_dirty_rows()
                await h.db.write(lambda conn, rows=fleet_rows: store.checkpoint_devices(conn,
                                                                                        rows))
                await h.db.close()
                p = await h.open()
                state = await h.db.read(store.load_state)
                p._fleet.load(state.devices, p.births.get)
            await p.handle([birth_message(births[name])])
            events.extend(p._fleet.take_events())
        record = p._fleet.devices[DEVICE]
        assert (record.boot, record.firmware) == (NEW.boot, "2.0.0")
        assert p.births.current_boot(DEVICE) == NEW.boot
        await h.db.close()

    run(go)
    reboots = [(e.previous_boot, e.boot) for e in events if e.kind == "reboot"]
    assert (NEW.boot, OLD.boot) not in reboots
    # Once the new boot's info was written, no old boot's info follows it.
    firmwares = info_firmwares(h)
    assert "2.0.0" in firmwares
    assert "1.0.0" not in firmwares[firmwares.index("2.0.0"):]


def test_telemetry_of_a_past_boot_is_stored_but_does_not_switch_the_device(
        tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")

    async def go() -> None:
        p = await h.open()
        await p.handle([birth_message(NEW), birth_message(OLD)])
        await p.handle([msg(f"fleet/{DEVICE}/telemetry",
                            f.telemetry_payload(1, 3, base_ms=T, reboot=0))])
        record = p._fleet.devices[DEVICE]
        assert record.boot == NEW.boot
        assert record.frames == 1  # received and counted all the same
        await h.db.close()

    run(go)
    assert h.rows("SELECT boot, seq FROM frames WHERE kind = 0") == [(OLD.boot, 3)]


def test_births_with_the_same_clock_are_ordered_by_arrival(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    same_t = replace(NEW, time_ms=OLD.time_ms)

    async def go() -> None:
        p = await h.open()
        await p.handle([birth_message(OLD)])
        await p.handle([birth_message(same_t)])
        assert p._fleet.devices[DEVICE].boot == NEW.boot
        await h.db.close()

    run(go)


def test_after_a_restart_a_redelivered_death_of_the_previous_boot_changes_nothing(
        tmp_path: Path) -> None:
    """Found by the model-based test: the fleet view restored from a checkpoint taken before
    the reboot still names the old boot; a redelivered Will of that boot took the device
    offline. The births (committed with every frame) say which boot is current."""
    h = Harness(tmp_path / "db")

    async def go() -> None:
        p = await h.open()
        await p.handle([birth_message(OLD)])
        rows = p._fleet.take_dirty_rows()  # the checkpoint, before the reboot
        await h.db.write(lambda conn: store.checkpoint_devices(conn, rows))
        await p.handle([birth_message(NEW)])
        await h.db.close()
        p = await h.open()
        state = await h.db.read(store.load_state)
        p._fleet.load(state.devices, p.births.get)
        p._fleet.take_events()
        await p.handle([msg(f"fleet/{DEVICE}/death", msgpack.packb({"v": 1, "b": OLD.boot,
                                                                     "t": T}))])
        assert p._fleet.devices[DEVICE].online
        assert p._fleet.take_events() == []
        await h.db.close()

    run(go)
