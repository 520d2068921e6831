"""The fleet view rebuilt after a restart: boots known from the dedup ledger (frames stored)
whose device the last fleet checkpoint did not have yet (found by the model-based test: a kill
right after a device's first group commit, before the fleet's first checkpoint of it)."""

from __future__ import annotations

import tests.support.factories as f
from gateway.fleet import completeness
from gateway.fleet.state import FleetState
from gateway.seq_ranges import SeqRanges

DEVICE = f.device_id(1)
OLD_BOOT, NEW_BOOT = f.boot_id(1), f.boot_id(1, reboot=1)


def restored_fleet() -> FleetState:
    fleet = FleetState()
    fleet.load([])  # the checkpoint predates the device
    fleet.note_boot(DEVICE, OLD_BOOT)  # its frames are in the ledger
    return fleet


def test_a_stored_boot_of_a_device_the_checkpoint_lacked_is_listed_once_the_device_is_seen(
        ) -> None:
    fleet = restored_fleet()
    fleet.observe_birth(DEVICE, f.birth(1, reboot=1), f.now_ms())
    assert fleet.devices[DEVICE].boots == [OLD_BOOT, NEW_BOOT]
    ledger = {(DEVICE, OLD_BOOT): SeqRanges([(0, 1)])}
    report = completeness.of_device(fleet.devices[DEVICE], ledger)  # type: ignore[arg-type]
    assert [(b.boot, b.received) for b in report.boots] == [(NEW_BOOT, 0), (OLD_BOOT, 1)]


def test_a_forgotten_device_takes_no_stored_boots_along_into_its_next_record() -> None:
    fleet = restored_fleet()
    fleet.forget(DEVICE)
    fleet.observe_birth(DEVICE, f.birth(1, reboot=1), f.now_ms())
    assert fleet.devices[DEVICE].boots == [NEW_BOOT]
