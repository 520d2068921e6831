"""Remote-write 1.0: a sender MUST send a series' samples in timestamp order. Within every
request each series' samples ascend, whatever order the device put them in a frame and whatever
mix of replayed history and live frames shares the request."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path

import tests.support.factories as f
from device_protocol import RawSample, RawTelemetry, encode_telemetry
from gateway.buffer.entry_cache import EntryCache
from tests.support.forward_harness import RecordingReceiver, Series, drain, make_forwarder
from tests.support.pipeline_harness import Harness, birth_msg, msg, tele_msg


def out_of_order_series(series: Series) -> list[str]:
    """Series whose samples go back in time within this one request."""
    last: dict[str, int] = {}
    backwards: list[str] = []
    for labels, samples in series:
        key = repr(sorted(labels.items()))
        for _, ts in samples:
            if key in last and ts < last[key]:
                backwards.append(key)
            last[key] = ts
    return backwards


def dt_frame(seq: int, base_ms: int) -> bytes:
    """One series sampled at +500 ms then -500 ms of the frame's time (and a plain sample)."""
    samples = (RawSample(0, 1.0, 500, ()), RawSample(0, 2.0, -500, ()), RawSample(1, 3.0, 0, ()))
    return encode_telemetry(RawTelemetry(boot=f.boot_id(1), seq=seq, time_ms=base_ms,
                                         samples=samples, historical=False))


def test_samples_of_a_series_within_a_frame_go_out_in_timestamp_order(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    live, cold = RecordingReceiver(url="http://live.test/w"), RecordingReceiver(url="http://cold.test/w")
    both = (live.url, cold.url)  # two cursors: the buffer stays for the second forwarder
    base = f.now_ms() - 60_000

    async def go() -> None:
        await h.open()
        await h.pipeline.handle([birth_msg(1)])
        await h.pipeline.handle([msg(f"fleet/{f.device_id(1)}/telemetry", dt_frame(0, base))])
        await drain(make_forwarder(h, live.client(), endpoints=both))
        await drain(make_forwarder(h, cold.client(), cache=EntryCache(), endpoints=both))
        await h.db.close()

    asyncio.run(go())
    for receiver in (live, cold):
        assert [out_of_order_series(r) for r in receiver.requests] == [[]]
        temps = [(v, ts) for labels, samples in receiver.requests[0]
                 if labels["__name__"] == "device_temperature_celsius" for v, ts in samples]
        assert temps == [(2.0, base - 500), (1.0, base + 500)]


def test_replayed_history_and_live_frames_in_one_request_are_in_order_per_series(
        tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    receivers = [RecordingReceiver(url="http://live.test/w"),
                 RecordingReceiver(url="http://cold.test/w")]
    both = (receivers[0].url, receivers[1].url)
    base = f.now_ms() - 600_000

    async def go() -> None:
        await h.open()
        await h.pipeline.handle([birth_msg(i) for i in range(3)])
        # Live frames first (seq 10..14), then the device's history (seq 0..9, 'h', older).
        await h.pipeline.handle([tele_msg(i, s, base) for s in range(10, 15) for i in range(3)])
        await h.pipeline.handle([tele_msg(i, s, base, historical=True)
                                 for s in range(10) for i in range(3)])
        await drain(make_forwarder(h, receivers[0].client(), endpoints=both))
        await drain(make_forwarder(h, receivers[1].client(), cache=EntryCache(), endpoints=both))
        await h.db.close()

    asyncio.run(go())
    for receiver in receivers:
        assert len(receiver.requests) == 2  # 3 infos + 15 x 2 + 30 x 2 samples, 50 a request
        assert [out_of_order_series(r) for r in receiver.requests] == [[], []]
        sent: dict[str, int] = defaultdict(int)
        for labels, samples in (s for r in receiver.requests for s in r):
            sent[repr((sorted(labels.items()), samples))] += 1
        assert max(sent.values()) == 1 and len(sent) == 3 + 15 * 3 * 2  # each sample once
