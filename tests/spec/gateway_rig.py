"""The gateway's data path in the test's process, pointed at a recording receiver.

A real Pipeline on a real SQLite file (tests/test_pipeline_support.Harness) and one real
Forwarder with the real `HttpRemoteWriteClient`, configured as `gateway.app` configures it, so
what the receiver records is what a deployed gateway would send. Frames go in as MQTT messages
would arrive (topic, payload bytes); only the broker is left out.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.forward.client import HttpRemoteWriteClient
from gateway.forward.forwarder import Forwarder
from gateway.ingest.inbox import InboundMessage
from gateway.settings import ForwardConfig
from tests.spec.rw_wire import Sample, decode_write_request
from tests.support.pipeline_harness import Harness

BASE_CONFIG = ForwardConfig(endpoints=(), max_samples_per_request=500, flush_deadline_s=0.0,
                            request_timeout_s=5.0, retry_min_s=0.01, retry_max_s=0.05,
                            external_labels=(), shutdown_deadline_s=1.0)
_mids = itertools.count(1)


class LocalGateway:
    def __init__(self, path: Path, url: str, *, store: dict[str, Any] | None = None,
                 **forward: Any) -> None:
        self.harness = Harness(path, **(store or {}))  # max_bytes, policy of the buffer
        self.config = dataclasses.replace(BASE_CONFIG, endpoints=(url,), **forward)
        self.url = url
        self.forwarder: Forwarder
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LocalGateway:
        h = self.harness
        await h.open()
        h.buffer.endpoints = self.config.endpoints
        self.forwarder = Forwarder(
            endpoint=self.url,
            client=HttpRemoteWriteClient(self.url, timeout_s=self.config.request_timeout_s),
            buffer=h.buffer, config=self.config, metrics=h.metrics)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
        await self.forwarder.aclose()
        await self.harness.db.close()

    # ------------------------------------------------------------------ input
    async def publish(self, *messages: tuple[str, bytes], received_ms: int | None = None
                      ) -> None:
        """Hand the messages to the pipeline as one group (as one read from the broker)."""
        from tests.spec.device_frames import now_ms

        at = received_ms if received_ms is not None else now_ms()
        await self.harness.pipeline.handle(
            [InboundMessage(topic, payload, next(_mids), 1, 1, at) for topic, payload in messages])
        self.forwarder.notify()

    # ------------------------------------------------------------------ forwarding
    def start(self) -> None:
        """Forward in the background, as the gateway does, until stop() or drain()."""
        self._task = asyncio.create_task(self.forwarder.run(), name="spec-forwarder")

    async def drain(self, within_s: float = 15.0) -> None:
        """Send everything committed, then return (the forwarder's shutdown path)."""
        self.forwarder.begin_drain()
        if self._task is None:
            self._task = asyncio.create_task(self.forwarder.run(), name="spec-forwarder")
        task, self._task = self._task, None
        await asyncio.wait_for(task, within_s)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self.forwarder.stop_retrying()
        self.forwarder.begin_drain()
        try:
            await asyncio.wait_for(asyncio.shield(task), 2.0)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ------------------------------------------------------------------ reading back
    def dead_letter_samples(self) -> list[tuple[tuple[tuple[str, str], ...], Sample]]:
        """(series key, sample) of everything in the dead-letter table, read independently."""
        out: list[tuple[tuple[tuple[str, str], ...], Sample]] = []
        for (entry,) in self.harness.rows("SELECT entry FROM dead_letters ORDER BY id"):
            for series in decode_write_request(bytes(entry)):
                out.extend((series.key(), sample) for sample in series.samples)
        return out

    def dead_letter_reasons(self) -> list[str]:
        return [r for (r,) in self.harness.rows("SELECT reason FROM dead_letters ORDER BY id")]

    def paused_gauge(self) -> float | None:
        """fleetgate_forward_paused of the endpoint, as /metrics shows it."""
        return self.harness.metrics.registry.get_sample_value(
            "fleetgate_forward_paused", {"endpoint": self.url})

    def metric(self, name: str, **labels: str) -> float:
        """A sample of the gateway's /metrics registry (0 when absent)."""
        return self.harness.metrics.registry.get_sample_value(name, labels) or 0.0

    def frames_buffered(self) -> int:
        return int(self.harness.rows("SELECT COUNT(*) FROM frames")[0][0])


def run_through(path: Path, url: str, *groups: Sequence[tuple[str, bytes]],
                **forward: Any) -> LocalGateway:
    """Publish each group of messages (one pipeline batch each), then drain to the receiver."""

    async def go() -> LocalGateway:
        async with LocalGateway(path, url, **forward) as gw:
            for group in groups:
                await gw.publish(*group)
            await gw.drain()
        return gw

    return asyncio.run(go())
