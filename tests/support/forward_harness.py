"""Helpers for the forwarder's tests (no tests here): a forwarder over the pipeline harness, and
a recording remote-write receiver behind httpx.MockTransport, so the real client classifies the
answers the test chooses."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx

from gateway.buffer.entry_cache import EntryCache
from gateway.forward.client import HttpRemoteWriteClient, RemoteWriteClient
from gateway.forward.forwarder import Forwarder, Resume
from gateway.remote_write.wire import decode_write_request, decompress
from gateway.settings import ForwardConfig
from tests.support.pipeline_harness import Harness

URL = "http://receiver.test/api/v1/write"
Series = list[tuple[dict[str, str], list[tuple[float, int]]]]
CONFIG = ForwardConfig(endpoints=(URL,), max_samples_per_request=50, flush_deadline_s=0.0,
                       request_timeout_s=1.0, retry_min_s=0.001, retry_max_s=0.01,
                       external_labels=(), shutdown_deadline_s=1.0)


class RecordingReceiver:
    """Decodes and records every request; `answer(series)` gives the HTTP response."""

    def __init__(self, answer: Callable[[Series], httpx.Response] | None = None,
                 url: str = URL) -> None:
        self.url = url
        self.requests: list[Series] = []
        self.accepted: list[Series] = []
        self._answer = answer or (lambda series: httpx.Response(204))

    def handle(self, request: httpx.Request) -> httpx.Response:
        series = decode_write_request(decompress(request.content))
        self.requests.append(series)
        response = self._answer(series)
        if 200 <= response.status_code < 300:
            self.accepted.append(series)
        return response

    def client(self) -> HttpRemoteWriteClient:
        return HttpRemoteWriteClient(self.url, transport=httpx.MockTransport(self.handle))

    def samples(self, requests: list[Series] | None = None) -> list[tuple[str, float, int]]:
        """(series name + labels, value, timestamp) of every sample, in request order."""
        return [(_key(labels), value, ts) for series in (requests or self.accepted)
                for labels, samples in series for value, ts in samples]


def _key(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def make_forwarder(h: Harness, client: RemoteWriteClient, *, config: ForwardConfig = CONFIG,
                   cache: EntryCache | None = None, **kw: Any) -> Forwarder:
    return Forwarder(
        endpoint=client.endpoint, client=client, config=config, metrics=h.metrics,
        buffer=h.buffer_for(kw.pop("endpoints", config.endpoints), cache),
        resume=Resume(cursor=kw.pop("cursor", 0), cursor_offset=kw.pop("cursor_offset", 0),
                      live_lane=kw.pop("live_lane", None)), **kw)


async def wait_until(condition: Callable[[], bool], within_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.002)


async def drain(forwarder: Forwarder) -> None:
    forwarder.begin_drain()
    await asyncio.wait_for(forwarder.run(), 10)
