"""buffer_full_policy=drop_oldest: a dropped frame is one no endpoint delivers, exactly. Frames
in a request in flight are not eligible (the next-oldest unsent ones go instead)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

import tests.support.factories as f
from tests.support.forward_harness import RecordingReceiver, make_forwarder, wait_until
from tests.support.pipeline_harness import Harness, birth_msg, tele_msg


def test_drop_oldest_never_counts_a_frame_that_is_delivered(tmp_path: Path) -> None:
    frame_bytes = len(f.telemetry_payload(1, 0, base_ms=f.now_ms()))
    h = Harness(tmp_path / "db", max_bytes=30 * frame_bytes, policy="drop_oldest")
    release, in_flight = asyncio.Event(), asyncio.Event()
    receiver = RecordingReceiver()

    async def blocking(request: httpx.Request) -> httpx.Response:
        in_flight.set()
        await release.wait()  # the first request hangs while ingest overflows the cap
        return receiver.handle(request)

    base = f.now_ms() - 600_000

    async def go() -> None:
        await h.open()
        await h.pipeline.handle([birth_msg(1)])
        for seq in range(20):
            await h.pipeline.handle([tele_msg(1, seq, base)])
        client = receiver.client()
        client._client._transport = httpx.MockTransport(blocking)  # type: ignore[attr-defined]
        forwarder = make_forwarder(h, client)
        task = asyncio.create_task(forwarder.run())
        await asyncio.wait_for(in_flight.wait(), 5)  # the birth and 20 frames, on the wire
        for seq in range(20, 80):
            await h.pipeline.handle([tele_msg(1, seq, base)])
        release.set()
        forwarder.begin_drain()
        await asyncio.wait_for(task, 10)
        await wait_until(lambda: forwarder.cursor == h.buffer.committed_upto)
        await h.db.close()

    asyncio.run(go())
    delivered = {int(v) % 100_000 for labels, samples in (s for r in receiver.accepted for s in r)
                 if labels["__name__"] == "device_temperature_celsius" for v, _ in samples}
    dropped = h.counter("fleetgate_frames_dropped_total", "buffer_full")
    assert dropped > 0
    assert set(range(20)) <= delivered  # the frames in flight were not dropped
    assert 80 - len(delivered) == dropped  # dropped means not delivered, exactly
    assert h.rows("SELECT value FROM counters WHERE name = 'dropped_buffer_full'") == [
        (int(dropped),)]


def test_frames_dropped_between_retries_are_left_out_of_the_next_attempt(
        tmp_path: Path) -> None:
    frame_bytes = len(f.telemetry_payload(1, 0, base_ms=f.now_ms()))
    h = Harness(tmp_path / "db", max_bytes=30 * frame_bytes, policy="drop_oldest")
    down = True
    receiver = RecordingReceiver(lambda series: httpx.Response(503) if down
                                 else httpx.Response(204))
    base = f.now_ms() - 600_000

    async def go() -> None:
        nonlocal down
        await h.open()
        await h.pipeline.handle([birth_msg(1)])
        for seq in range(20):
            await h.pipeline.handle([tele_msg(1, seq, base)])
        forwarder = make_forwarder(h, receiver.client())
        task = asyncio.create_task(forwarder.run())
        await wait_until(lambda: len(receiver.requests) >= 2)  # retrying the first request
        for seq in range(20, 80):
            await h.pipeline.handle([tele_msg(1, seq, base)])
        down = False
        forwarder.begin_drain()
        await asyncio.wait_for(task, 10)
        await h.db.close()

    asyncio.run(go())
    delivered = [int(v) % 100_000 for labels, samples in (s for r in receiver.accepted for s in r)
                 if labels["__name__"] == "device_temperature_celsius" for v, _ in samples]
    births = sum(1 for r in receiver.accepted for labels, _ in r
                 if labels["__name__"] == "fleet_device_info")
    dropped = h.counter("fleetgate_frames_dropped_total", "buffer_full")
    assert len(delivered) == len(set(delivered))
    assert not set(range(20)) <= set(delivered)  # the retried request lost its dropped frames
    assert (1 + 80) - (births + len(delivered)) == dropped > 0  # each counted once
