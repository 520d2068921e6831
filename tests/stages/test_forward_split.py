"""remote_write_max_samples is a hard cap: a frame larger than it is split across requests in
series order, and the forwarder's durable position can point inside a frame, so a crash resends
at most one request."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import Counter
from pathlib import Path

import httpx
import pytest

import tests.support.factories as f
from device_protocol import HistogramValue, RawSample, RawTelemetry, encode_telemetry
from gateway.buffer import store
from tests.support.forward_harness import (
    CONFIG,
    RecordingReceiver,
    drain,
    make_forwarder,
    wait_until,
)
from tests.support.pipeline_harness import Harness, birth_msg, msg


def big_frame(kind: str, seq: int = 0) -> bytes:
    """230 gauge samples of distinct series, or 38 histograms (6 series each: 228 samples)."""
    if kind == "gauges":
        samples = [RawSample(0, float(k), 0, (("core", str(k)),)) for k in range(230)]
    else:
        samples = [RawSample(2, HistogramValue(float(k + 3), 0.5, (1.0, 1.0, 1.0)), 0,
                             (("core", str(k)),)) for k in range(38)]
    raw = RawTelemetry(boot=f.boot_id(1), seq=seq, time_ms=f.now_ms() - 60_000 + seq,
                       samples=tuple(samples), historical=False)
    return encode_telemetry(raw)


async def open_with_big_frame(h: Harness, kind: str) -> None:
    await h.pipeline.handle([birth_msg(1)])
    await h.pipeline.handle([msg(f"fleet/{f.device_id(1)}/telemetry", big_frame(kind))])


def series_order(requests: list) -> list[tuple[str, str]]:  # type: ignore[type-arg]
    return [(labels["__name__"], labels.get("core", "")) + ((labels["le"],) if "le" in labels
            else ()) for series in requests for labels, _ in series
            if labels["__name__"] != "fleet_device_info"]


@pytest.mark.parametrize(("kind", "samples"), [("gauges", 230), ("histograms", 228)])
def test_a_frame_larger_than_the_cap_is_split_in_series_order(
        tmp_path: Path, kind: str, samples: int) -> None:
    h = Harness(tmp_path / "db")
    receiver = RecordingReceiver(url="http://split.test/w")
    in_one_request = RecordingReceiver(url="http://whole.test/w")

    async def go() -> None:
        await h.open()
        await open_with_big_frame(h, kind)
        endpoints = (receiver.url, in_one_request.url)  # the buffer stays for the second
        await drain(make_forwarder(h, receiver.client(), endpoints=endpoints))
        await drain(make_forwarder(h, in_one_request.client(), endpoints=endpoints,
                                   config=dataclasses.replace(CONFIG,
                                                              max_samples_per_request=1000)))
        await h.db.close()

    asyncio.run(go())
    sizes = [sum(len(s) for _, s in r) for r in receiver.requests]
    assert max(sizes) <= 50 and sum(sizes) == samples + 1  # + fleet_device_info
    assert len(sizes) == -(-(samples + 1) // 50)
    order = series_order(receiver.requests)
    assert len(order) == len(set(order)) == samples  # each sample once
    assert len(in_one_request.requests) == 1
    assert order == series_order(in_one_request.requests)  # the frame's own series order


def test_a_crash_inside_a_split_frame_resends_at_most_one_request(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    hold = asyncio.Event()
    first = RecordingReceiver()
    after = RecordingReceiver()

    async def blocking(request: httpx.Request) -> httpx.Response:
        if len(first.requests) >= 2:
            first.handle(request)  # the receiver writes part 3, then the gateway "dies" before
            await hold.wait()  # its 2xx arrives: the worst case, part 3 is sent again
        return first.handle(request)

    async def go() -> None:
        await h.open()
        await open_with_big_frame(h, "gauges")
        client = first.client()
        client._client._transport = httpx.MockTransport(blocking)  # type: ignore[attr-defined]
        forwarder = make_forwarder(h, client)
        task = asyncio.create_task(forwarder.run())
        await wait_until(lambda: forwarder.status.sent_samples == 100)
        await asyncio.sleep(0.05)  # the third request is in flight
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        state = await h.db.read(store.load_state)  # all that survives the crash
        endpoint = client.endpoint
        restarted = make_forwarder(h, after.client(), cache=type(h.cache)(),
                                   cursor=state.cursors.get(endpoint, 0),
                                   cursor_offset=state.cursor_offsets.get(endpoint, 0))
        await drain(restarted)
        assert restarted.cursor == h.buffer.committed_upto
        await h.db.close()

    asyncio.run(go())
    before = series_order(first.accepted)
    resumed = series_order(after.requests)
    sent = Counter(before + resumed)
    assert set(sent) == {("device_temperature_celsius", str(k)) for k in range(230)}
    doubled = sum(c - 1 for c in sent.values())
    assert 0 < doubled <= 50  # at most one request's worth: part 3
    assert len(after.requests) == 3  # 230 + 1 samples: parts 3, 4, 5 after the crash
    assert series_order(after.requests)[0] == ("device_temperature_celsius", "99")  # resumes
