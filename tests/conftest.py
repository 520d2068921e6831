"""Real service processes for tests: Mosquitto, Prometheus, VictoriaMetrics on loopback.

Each fixture starts its own process on a free port in its own directory and stops it (by PID) at
teardown, also when the test fails. A missing binary fails the test with how to install it: a
test that cannot reach its service has not shown anything, so it must not pass as skipped.

The *_session variants are shared by every test in the run: use them only for tests that add
uniquely labelled data and never restart or reconfigure the service.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devstack import (
    GatewayProcess,
    Mosquitto,
    Prometheus,
    VictoriaMetrics,
)
from tests.support.services import running


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker with the shipped deploy/mosquitto/mosquitto.conf limits, persistence on."""
    yield from running(Mosquitto(tmp_path / "mosquitto"))


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Prometheus]:
    """Prometheus with the remote-write receiver on and a 30m out-of-order window."""
    yield from running(Prometheus(tmp_path / "prometheus"))


@pytest.fixture
def victoria_metrics(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    """VictoriaMetrics keeping samples of any age (retention 100y), no response cache."""
    yield from running(VictoriaMetrics(tmp_path / "victoria-metrics"))


@pytest.fixture(scope="session")
def prometheus_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    yield from running(Prometheus(tmp_path_factory.mktemp("prometheus-session")))


@pytest.fixture(scope="session")
def victoria_metrics_session(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[VictoriaMetrics]:
    yield from running(VictoriaMetrics(tmp_path_factory.mktemp("victoria-metrics-session")))


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


_FOLDER_MARKERS = ("logic", "stages", "e2e", "faults", "model", "spec")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its folder's kind, so `-m` selects a layer of the suite."""
    tests_dir = Path(__file__).parent
    for item in items:
        parts = item.path.relative_to(tests_dir).parts
        if parts and parts[0] in _FOLDER_MARKERS:
            item.add_marker(parts[0])

