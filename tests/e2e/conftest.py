"""Fixtures for end-to-end tests: the gateway as a real process beside the real services."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.devstack import GatewayProcess, Mosquitto, Prometheus, VictoriaMetrics

GatewayFactory = Callable[..., GatewayProcess]


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[GatewayFactory]:
    """make(mosquitto, *receivers, **settings) -> a started gateway, stopped at teardown."""
    started: list[GatewayProcess] = []

    def make(mosquitto: Mosquitto, *receivers: Prometheus | VictoriaMetrics,
             **settings: str) -> GatewayProcess:
        gw = GatewayProcess(tmp_path / "gateway", mqtt_url=mosquitto.url,
                            remote_write_urls=[r.remote_write_url for r in receivers],
                            settings=settings)
        started.append(gw)
        return gw.start()

    yield make
    for gw in started:
        gw.stop()
