"""Exactly once, but for one window: a crash between a receiver's 2xx and the gateway's cursor
commit resends that one request, and nothing else (docs/reliability.md's at-least-once window).

The receiver holds a request open, the gateway is killed (SIGKILL) while it waits, then the
receiver answers 204 into the dead connection: the samples are written but the gateway never
heard so. After the restart every sample is there; only that request's samples are doubled,
also when the request is one part of a frame larger than remote_write_max_samples.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from devstack import GatewayProcess
from tests.spec.device_frames import birth_msg, now_ms, tele_msg
from tests.spec.rw_receiver import RecordingReceiver, Reply, Request
from tests.spec.spec_cases import frames, sample_set
from tests.support.publisher import Publisher

GatewayStarter = Callable[..., GatewayProcess]
pytestmark = pytest.mark.e2e  # Mosquitto and a gateway process


def crash_with_a_request_in_flight(gw: GatewayProcess, receiver: RecordingReceiver) -> Request:
    """Kill the gateway while the receiver holds its second request, answer that request 204 into
    the dead connection, start the gateway again; returns the request that was in flight."""
    receiver.wait_for(lambda rx: rx.held == 1, what="the second request held")
    gw.kill()
    held = receiver.snapshot()[-1]
    assert held.sample_count, "the held request carries samples"
    receiver.release()  # written, but the 204 reaches nobody
    gw.start()
    return held


def assert_doubled_only_from(held: Request, receiver: RecordingReceiver) -> None:
    doubled = {sample for sample, n in receiver.accepted_counts().items() if n > 1}
    assert doubled <= set(sample_set([held])), "samples doubled outside the request in flight"


def test_a_crash_resends_at_most_the_request_in_flight(
        gateway_process: GatewayStarter, device: Publisher, receiver: RecordingReceiver) -> None:
    receiver.script(Reply(204), Reply(204, hold=True))
    gw = gateway_process(remote_write_max_samples="20")
    t = now_ms() - 60_000
    device.publish([birth_msg(), *(m for group in frames(10, t_ms=t) for m in group)])
    held = crash_with_a_request_in_flight(gw, receiver)
    receiver.wait_for(lambda rx: len(rx.accepted_counts()) == 1 + 10 * 8, within_s=30,
                      what="every sample after the restart")
    assert_doubled_only_from(held, receiver)
    assert max(receiver.accepted_counts().values()) <= 2


def test_a_crash_resends_at_most_the_request_in_flight_of_a_split_frame(
        gateway_process: GatewayStarter, device: Publisher, receiver: RecordingReceiver) -> None:
    """A frame larger than remote_write_max_samples is split across requests; a kill -9
    while one of them is in flight (written, its 204 lost) doubles that request only, never the
    frame's other parts (issue 11, finding 11: the at-least-once window stays one request)."""
    receiver.script(Reply(204), Reply(204, hold=True))
    gw = gateway_process(remote_write_max_samples="50")
    big = tele_msg(0, [["channel_volts", float(i), 0, {"ch": str(i)}] for i in range(200)],
                   t_ms=now_ms() - 60_000)
    device.publish([birth_msg(), big])
    held = crash_with_a_request_in_flight(gw, receiver)
    receiver.wait_for(lambda rx: len(rx.accepted_counts()) == 1 + 200, within_s=30,
                      what="every sample after the restart")
    assert max(r.sample_count for r in receiver.snapshot()) <= 50, receiver.describe()
    assert_doubled_only_from(held, receiver)
