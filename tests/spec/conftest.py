"""The remote-write specification suite: the forwarder checked from outside, one test per rule.

The rules are those of the Prometheus remote-write 1.0 specification
(https://prometheus.io/docs/specs/remote_write_spec/) and of the sender cases of its compliance
suite (prometheus/compliance), plus where fleetgate documents going beyond them. Frames are
built by hand from docs/protocol.md (device_frames), go through the gateway's real pipeline,
SQLite buffer, forwarder and HTTP client, in process (gateway_rig) or as `fleetgate run` behind
Mosquitto, and are read back at a real HTTP receiver (rw_receiver) with a decoder that shares
no code with the gateway (rw_wire).

    test_remote_write_spec.py                 wire, headers, labels, ordering, sizes, counts
    test_remote_write_spec_answers.py         retries, backoff, Retry-After, 4xx, 413, pauses
    test_remote_write_spec_staleness.py       stale markers (death, timeout, restart, reboot)
    test_remote_write_spec_staleness_info.py  stale markers for fleet_device_info
    test_remote_write_spec_external_labels.py label rules with external labels
    test_remote_write_spec_pause.py           a paused endpoint as an operator sees it
    test_remote_write_spec_crash.py           the at-least-once window after a kill -9
    test_remote_write_spec_drops.py           drop_oldest: dropped means not delivered
    test_remote_write_spec_vectors.py         the protocol vectors end to end
    test_remote_write_spec_random.py          seeded random traffic: order and once, always
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devstack import GatewayProcess, Mosquitto
from tests.spec.rw_receiver import RecordingReceiver
from tests.spec.spec_cases import GATEWAY_SETTINGS
from tests.support.publisher import Publisher


@pytest.fixture
def receiver() -> Iterator[RecordingReceiver]:
    rx = RecordingReceiver().start()
    try:
        yield rx
    finally:
        rx.close()


GatewayStarter = Callable[..., GatewayProcess]


@pytest.fixture
def gateway_process(tmp_path: Path, mosquitto: Mosquitto,
                    receiver: RecordingReceiver) -> Iterator[GatewayStarter]:
    """start(**settings) -> `fleetgate run` against the test's broker and receiver."""
    started: list[GatewayProcess] = []

    def start(**settings: str) -> GatewayProcess:
        gw = GatewayProcess(tmp_path / "gateway", mqtt_url=mosquitto.url,
                            remote_write_urls=[receiver.url],
                            settings={**GATEWAY_SETTINGS, **settings})
        started.append(gw)
        return gw.start()

    yield start
    for gw in started:
        gw.stop()


@pytest.fixture
def device(mosquitto: Mosquitto) -> Iterator[Publisher]:
    """An MQTT client that publishes the hand-built frames at QoS 1, several per call."""
    with Publisher(mosquitto.url, client_id="spec-device") as publisher:
        yield publisher
