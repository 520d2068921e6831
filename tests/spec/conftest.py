"""Fixtures of the remote-write specification suite: a recording receiver per test.

The suite checks the forwarder from the outside, against the Prometheus remote-write 1.0
specification (https://prometheus.io/docs/specs/remote_write_spec/): frames built by hand from
docs/protocol.md go in, and what reaches a real HTTP receiver is read back with a decoder that
shares no code with the gateway's encoder.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from publisher import Publisher
from rw_receiver import RecordingReceiver
from spec_cases import GATEWAY_SETTINGS

from gateway.devstack import GatewayProcess, Mosquitto


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
