"""`buffer_full_policy=drop_oldest` as the receiver sees it: dropped means not delivered, exactly.

A request is held open at the receiver and the next one refused with 503 while frames keep
coming into a small buffer, so the policy deletes frames that a request on the wire or waiting
for its retry holds (issue 11, finding 6). Each frame then reached the receiver whole and once,
or is counted dropped, never both (docs/operations.md, section 4).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from tests.spec.device_frames import birth_msg, now_ms, tele_msg
from tests.spec.gateway_rig import LocalGateway
from tests.spec.rw_receiver import RecordingReceiver, Reply
from tests.spec.spec_cases import frames

FRAMES = 30  # telemetry frames of 8 samples, one request each (the cap), plus the birth


def test_drop_oldest_a_frame_is_delivered_whole_or_counted_dropped_never_both(
        tmp_path: Path, receiver: RecordingReceiver) -> None:
    receiver.script(Reply(204, hold=True), Reply(503), Reply(503), Reply(503))
    t = now_ms() - 600_000

    async def go() -> tuple[float, float]:
        async with LocalGateway(tmp_path / "buffer.db", receiver.url,
                                store={"max_bytes": 500, "policy": "drop_oldest"},
                                max_samples_per_request=8) as gw:
            gw.start()
            await gw.publish(birth_msg(), *frames(1, t_ms=t)[0])
            await receiver.until(lambda rx: rx.held == 1, what="the first request held")
            for group in frames(FRAMES - 1, t_ms=t, first_seq=1):
                await gw.publish(*group)
            receiver.release()
            await gw.drain()
            return (gw.metric("fleetgate_forward_frames_dropped_total", endpoint=receiver.url),
                    gw.metric("fleetgate_frames_dropped_total", reason="buffer_full"))

    dropped, dropped_total = asyncio.run(go())
    accepted = receiver.accepted_counts()
    assert set(accepted.values()) == {1}, "a sample delivered twice"
    info = "fleet_device_info"
    per_frame = Counter(ts for key, ts, _ in accepted if dict(key)["__name__"] != info)
    assert set(per_frame.values()) <= {8}, f"a frame delivered in part: {per_frame}"
    births = sum(1 for key, _, _ in accepted if dict(key)["__name__"] == info)
    assert births + len(per_frame) + dropped_total == 1 + FRAMES, (births, per_frame, dropped_total)
    assert dropped == dropped_total > 0, "one endpoint: its drops are all the drops"


def test_drop_oldest_never_drops_a_frame_partly_sent(tmp_path: Path,
                                                     receiver: RecordingReceiver) -> None:
    """A frame split across requests, its second part held open while the buffer overflows:
    the frame is not eligible for dropping (its first part is at the receiver), so all of it
    arrives, once."""
    receiver.script(Reply(204), Reply(204, hold=True))
    t = now_ms() - 600_000
    big = tele_msg(0, [["channel_volts", float(i), 0, {"ch": str(i)}] for i in range(200)],
                   t_ms=t)

    async def go() -> float:
        async with LocalGateway(tmp_path / "buffer.db", receiver.url,
                                store={"max_bytes": 3000, "policy": "drop_oldest"},
                                max_samples_per_request=50) as gw:
            gw.start()
            await gw.publish(birth_msg(), big)
            await receiver.until(lambda rx: rx.held == 1, what="the second part held")
            for group in frames(FRAMES, t_ms=t, first_seq=1):
                await gw.publish(*group)
            receiver.release()
            await gw.drain()
            return gw.metric("fleetgate_frames_dropped_total", reason="buffer_full")

    dropped = asyncio.run(go())
    accepted = receiver.accepted_counts()
    assert set(accepted.values()) == {1}, "a sample delivered twice"
    volts = [key for key, _, _ in accepted if dict(key)["__name__"] == "channel_volts"]
    assert len(volts) == 200, f"the split frame arrived in part: {len(volts)} of 200"
    assert dropped > 0
