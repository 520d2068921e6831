"""The label rules of the remote-write 1.0 spec with the gateway's external labels configured.

External labels are set on the whole gateway (FLEETGATE_EXTERNAL_LABELS), so these run
`fleetgate run` as a process: hand-built frames published through Mosquitto, the recording
receiver as the endpoint. Upper-case birth and sample label names sort before `__name__` in
byte order, as in Prometheus's own label sets; an external label named like a birth label
(`site`) must still give one label of that name.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from devstack import GatewayProcess
from tests.spec.device_frames import GAUGE, HISTOGRAM, birth_msg, histogram, now_ms, tele_msg
from tests.spec.rw_receiver import RecordingReceiver
from tests.spec.rw_wire import Series
from tests.spec.spec_cases import reported
from tests.support.publisher import Publisher

GatewayStarter = Callable[..., GatewayProcess]
pytestmark = pytest.mark.e2e  # Mosquitto and a gateway process
EXTERNAL = "region=eu-1,a_zone=b,site=gw-7"


def forwarded(gateway_process: GatewayStarter, device: Publisher,
              receiver: RecordingReceiver) -> list[Series]:
    gateway_process(external_labels=EXTERNAL)
    device.publish([birth_msg(labels={"site": "lab-7", "Zone": "eu", "rack": "r1"}),
                    tele_msg(0, [[GAUGE, 20.0], ["fan_speed_rpm", 900, 0, {"B": "x"}],
                                 [HISTOGRAM, histogram(1, 0.1, [0, 1, 1])]], t_ms=now_ms())])
    receiver.wait_for(lambda rx: len(reported(rx)) == 8, what="the frame forwarded")
    return receiver.accepted_series()


def test_labels_sorted_by_name_with_external_labels(
        gateway_process: GatewayStarter, device: Publisher, receiver: RecordingReceiver) -> None:
    for s in forwarded(gateway_process, device, receiver):
        names = [name for name, _ in s.labels]
        assert names == sorted(names), f"{s.name}: labels sent as {names}"
        assert s.label("region") == "eu-1" and s.label("a_zone") == "b", s.labels


def test_label_names_unique_with_external_labels(
        gateway_process: GatewayStarter, device: Publisher, receiver: RecordingReceiver) -> None:
    for s in forwarded(gateway_process, device, receiver):
        names = [name for name, _ in s.labels]
        assert len(names) == len(set(names)), f"{s.name}: repeated label names {names}"
        if s.label("device_id") is not None:  # protocol.md: an external label fills gaps only
            assert s.label("site") == "lab-7", s.labels


def test_upper_case_external_label_name_is_a_valid_label_name(
        gateway_process: GatewayStarter, device: Publisher, receiver: RecordingReceiver) -> None:
    """`Az` is a valid label name ([a-zA-Z_][a-zA-Z0-9_]*) that sorts before `__name__` in
    byte order; the gateway refused to start with it until b0d67f8 ("unsorted label name 'Az'
    (after '__name__')"). Found by this suite."""
    gateway_process(external_labels="Az=b")
    device.publish([birth_msg(), tele_msg(0, [[GAUGE, 20.0]])])
    receiver.wait_for(lambda rx: bool(rx.accepted_series()), what="the frame forwarded")
    for s in receiver.accepted_series():
        names = [name for name, _ in s.labels]
        assert names == sorted(names) and s.label("Az") == "b", s.labels
