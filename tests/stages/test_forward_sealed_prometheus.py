"""A backlog drained from sealed blocks into a real Prometheus 2.42 with no out-of-order window,
which refuses any sample older than its series' newest: the blocks, compressed when their
frames fell out of the entry cache, keep every series in order (no refusal, no dead letter)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

import tests.support.factories as f
from devstack import Prometheus
from gateway.forward.client import HttpRemoteWriteClient, SendResult
from tests.stages.test_forward_sealed import (  # noqa: F401  (roomy_volume: autouse fixture)
    DEVICES,
    FRAMES,
    outage_harness,
    roomy_volume,
    sealed_blocks,
)
from tests.stages.test_forwarder import make_forwarder, wait_until
from tests.support.fakes import Retryable
from tests.support.pipeline_harness import birth_msg, tele_msg
from tests.support.receivers import prom_samples
from tests.support.services import running

pytestmark = pytest.mark.e2e


@pytest.fixture
def strict_prometheus(tmp_path: Path) -> Iterator[Prometheus]:
    yield from running(Prometheus(tmp_path / "prometheus", out_of_order_window="0s"))


class Outage:
    """The real endpoint behind an outage: 503 until `up`."""

    endpoint = "fake://endpoint"

    def __init__(self, url: str) -> None:
        self.up = False
        self.attempts = 0
        self._real = HttpRemoteWriteClient(url)

    async def send(self, compressed_body: bytes) -> SendResult:
        self.attempts += 1
        if not self.up:
            return Retryable(503, "down", 0.001)
        return await self._real.send(compressed_body)

    async def aclose(self) -> None:
        await self._real.aclose()


def test_a_strict_prometheus_takes_a_backlog_drained_from_sealed_blocks(
        tmp_path: Path, strict_prometheus: Prometheus) -> None:
    h = outage_harness(tmp_path)
    outage = Outage(strict_prometheus.remote_write_url)
    # recent enough for Prometheus's head block, two devices' frames interleaved per block
    base = f.now_ms() - 120_000

    async def go() -> None:
        await h.open()
        forwarder = make_forwarder(h, outage)  # type: ignore[arg-type]
        task = asyncio.create_task(forwarder.run())
        await h.pipeline.handle([birth_msg(i) for i in range(DEVICES)])
        await wait_until(lambda: outage.attempts >= 1)
        for seq in range(FRAMES):
            await h.pipeline.handle([tele_msg(i, seq, base) for i in range(DEVICES)])
        assert len(sealed_blocks(h.cache, h.buffer.committed_upto)) >= 5
        outage.up = True
        forwarder.begin_drain()
        await asyncio.wait_for(task, 30)
        assert forwarder.cursor == h.buffer.committed_upto
        await forwarder.aclose()
        await h.db.close()

    asyncio.run(go())
    assert h.rows("SELECT COUNT(*) FROM dead_letters") == [(0,)]  # nothing refused
    for i in range(DEVICES):
        samples = prom_samples(strict_prometheus, "device_temperature_celsius", f.device_id(i))
        assert [v for _, v in samples] == [f.sample_value(i, s) for s in range(FRAMES)]
