"""The shortest histories the model-based test found, each a failure of the gateway against the
model when it was found (issue 11, after findings 1-12 were fixed): named, fast regression tests
that run the same machine step by step. Each docstring says what was wrong."""

from __future__ import annotations

import time
from collections.abc import Callable

from .test_model_pipeline import GatewayMachine


def run(steps: Callable[[GatewayMachine], None]) -> None:
    machine = GatewayMachine()
    try:
        steps(machine)
    finally:
        machine.teardown()


def test_missing_frames_are_still_counted_after_a_restart() -> None:
    """fleet_device_frames_missing said 0 after a restart while completeness said 1: the set
    of devices whose ledger may have gaps lived in memory only."""
    def steps(m: GatewayMachine) -> None:
        m.boot_gateway(policy="block", capped=False, n_born=1)
        m.telemetry("dev-a", 0, 2, False, None, [], 0)
        m.deliver(1, crash_at_ack=False)
        m.crash()
    run(steps)


def test_two_births_of_a_boot_in_one_commit_release_its_held_frames_once() -> None:
    """The held frames were released by each birth of their boot in the batch: the second
    release counted every one of them as a duplicate (2 duplicates that never arrived)."""
    def steps(m: GatewayMachine) -> None:
        m.boot_gateway(policy="block", capped=False, n_born=0)
        m.telemetry("dev-a", 0, 0, False, None, [("g", 0)], 1)
        m.deliver(2, crash_at_ack=False)
        m.birth("dev-a", 0, False)
        m.birth("dev-a", 0, False)
        m.deliver(2, crash_at_ack=False)
        m.forward(("ok",))
    run(steps)


def test_a_past_boots_frames_are_in_its_completeness() -> None:
    """A boot whose birth came after a newer boot's: its frames were stored, forwarded and
    counted in fleet_device_frames_received_total, but the boot was missing from the device's
    completeness (received there was short by them)."""
    def steps(m: GatewayMachine) -> None:
        m.boot_gateway(policy="block", capped=False, n_born=0)
        m.birth("dev-a", 1, False)
        m.birth("dev-a", 0, False)
        m.telemetry("dev-a", 0, 0, False, None, [], 0)
        m.deliver(3, crash_at_ack=False)
    run(steps)


def test_held_frames_at_the_cap_do_not_block_ingest_for_good() -> None:
    """Under buffer_full_policy=block, held frames (waiting for their birth) count in the
    buffer but the forwarder cannot free them: with 26 bytes held, a batch that needs the rest
    of the cap waited forever (and so would the birth that releases them)."""
    def steps(m: GatewayMachine) -> None:
        m.boot_gateway(policy="block", capped=True, n_born=0)
        m.telemetry("dev-a", 0, 0, False, None, [], 0)
        m.deliver(1, crash_at_ack=False)
        m.telemetry("dev-a", 0, 1, False, None, [("g", -50), ("x", -50), ("x", 0)], 3)
        m.deliver(4, crash_at_ack=False)
    run(steps)


def test_a_boot_closed_by_a_timeout_is_not_closed_again_after_a_restart() -> None:
    """Closed boots were remembered in memory only: after a restart the boot's death (its
    Will) closed it again, and its stale markers (refused with a 400 the first time) were sent
    a second time."""
    def steps(m: GatewayMachine) -> None:
        m.boot_gateway(policy="drop_oldest", capped=True, n_born=1)
        m.death("dev-a", 0)
        m.offline_timeout()
        m.forward(("ok", "400"))
        m.crash()
        m.ingest_while_a_request_is_in_flight(1)
    run(steps)


def test_frames_read_back_keep_the_clock_correction_they_were_stored_with() -> None:
    """A boot whose clock runs ahead is measured again at every birth of it (a redelivered one
    too, 50 ms later): frames stored before were read back after a restart with the new
    measurement and reached the receiver 50 ms off (across a 2xx/cursor crash, a resend is
    then a second sample, not the same one)."""
    def steps(m: GatewayMachine) -> None:
        m.boot_gateway(policy="block", capped=False, n_born=0)
        m.birth("dev-b", 2, False)
        m.telemetry("dev-b", 2, 0, False, None, [("g", 0)], 0)
        m.deliver(2, crash_at_ack=False)
        time.sleep(0.05)  # the broker hands the birth over again, later
        m.pending.append(m.sent[0])
        m.deliver(1, crash_at_ack=False)
        m.crash()
        m.forward(("ok",))
    run(steps)


def test_a_late_frame_after_a_death_is_closed_at_the_timeout() -> None:
    """A frame of a boot that arrived after the boot's death brought its series back; the
    offline timeout then sent no stale markers, the boot being remembered as closed."""
    def steps(m: GatewayMachine) -> None:
        m.boot_gateway(policy="block", capped=False, n_born=1)
        m.death("dev-a", 0)
        m.telemetry("dev-a", 0, 1, False, None, [("g", -50)], 0)
        m.deliver(2, crash_at_ack=False)
        m.offline_timeout()
        m.forward(("ok",))
    run(steps)


def test_a_valid_copy_of_a_held_frames_seq_is_kept_if_the_held_one_is_refused() -> None:
    """Finding 1's rule on the held path: a valid frame with the seq of a frame waiting for its
    birth was dropped as a duplicate at arrival; the held one was then quarantined at the
    release (unknown alias), and the seq's valid samples never reached the receiver."""
    def steps(m: GatewayMachine) -> None:
        m.boot_gateway(policy="block", capped=False, n_born=0)
        m.telemetry("dev-a", 0, 0, False, "unknown_alias", [], 0)
        m.telemetry("dev-a", 0, 0, False, None, [("g", 0)], 0)
        m.birth("dev-a", 0, False)
        m.deliver(3, crash_at_ack=False)
        m.forward(("ok",))
    run(steps)


def test_a_boot_stored_before_the_devices_first_checkpoint_is_in_its_completeness() -> None:
    """(issue 12) A kill right after a device's first group commit, before the fleet's first
    checkpoint of it: at the restart its stored boot was known to the ledger but not to the
    fleet (note_boot ignored devices without a record), so when the device came back on its
    newer boot the older boot's frames were missing from its completeness."""
    def steps(m: GatewayMachine) -> None:
        m.boot_gateway(policy="block", capped=False, n_born=0)
        m.birth("dev-a", 0, False)
        m.birth("dev-a", 1, False)
        m.telemetry("dev-a", 0, 0, False, None, [], 0)
        m.deliver(3, crash_at_ack=True)
        m.deliver_acked(2)
    run(steps)
