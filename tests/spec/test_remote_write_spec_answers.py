"""The forwarder against the remote-write 1.0 spec: what it does with each kind of answer.

"Senders MUST retry write requests on HTTP 5xx responses and MUST use a backoff algorithm to
prevent overwhelming the server. They MUST NOT retry write requests on HTTP 2xx and 4xx
responses other than 429. They MAY retry on HTTP 429 responses." Where fleetgate deliberately
goes beyond that (413 lowers the request size; 401/403/404 and vmauth's wrong-token 400 pause
the endpoint instead of dropping a whole stream over a configuration error) the test says so.
Intervals are measured between requests recorded by the receiver, with tolerant bounds.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections import defaultdict
from pathlib import Path

from device_frames import birth_msg, now_ms
from gateway_rig import LocalGateway, run_through
from rw_receiver import RecordingReceiver, Reply, Request
from spec_cases import Key, frames, intervals, order_violations


# ---------------------------------------------------------------------- retried answers
def test_honours_retry_after_seconds_and_http_date(tmp_path: Path,
                                                   receiver: RecordingReceiver) -> None:
    """Retry-After as delay-seconds (503) and as an HTTP-date (429) sets the wait, though the
    backoff alone would retry within 0.05 s."""
    def respond(request: Request) -> Reply:
        if request.index == 0:
            return Reply(503, b"busy", (("Retry-After", "1"),))
        if request.index == 1:  # a date 2 s ahead, whole seconds: 1 to 2 s from now
            date = email.utils.formatdate(time.time() + 2, usegmt=True)
            return Reply(429, b"slow down", (("Retry-After", date),))
        return Reply(204)

    receiver.responder = respond
    run_through(tmp_path / "buffer.db", receiver.url, [birth_msg()], *frames(1, t_ms=now_ms()),
                retry_min_s=0.01, retry_max_s=0.05)
    requests = receiver.snapshot()
    assert [r.status for r in requests] == [503, 429, 204]
    seconds, date = intervals(requests)
    assert 0.95 <= seconds <= 3.0, seconds
    assert 0.9 <= date <= 3.5, date


def test_429_is_retried(tmp_path: Path, receiver: RecordingReceiver) -> None:
    receiver.script(Reply(429, b"too many requests"), Reply(429))
    run_through(tmp_path / "buffer.db", receiver.url, [birth_msg()], *frames(3, t_ms=now_ms()))
    requests = receiver.with_samples()
    assert [r.status for r in requests] == [429, 429, 204]
    assert len({r.body for r in requests}) == 1
    assert set(receiver.accepted_counts().values()) == {1}


# ---------------------------------------------------------------------- refused data
# ---------------------------------------------------------------------- configuration errors


def test_5xx_retries_keep_every_series_in_order(tmp_path: Path,
                                               receiver: RecordingReceiver) -> None:
    """Frames that arrive while a request is being retried wait behind it: each series
    reaches the receiver in timestamp order, each sample once."""
    receiver.script(Reply(503), Reply(503), Reply(500))
    t = now_ms() - 60_000

    async def go() -> None:
        async with LocalGateway(tmp_path / "buffer.db", receiver.url,
                                max_samples_per_request=20) as gw:
            gw.start()
            await gw.publish(birth_msg(), *frames(1, t_ms=t)[0])
            await receiver.until(lambda rx: len(rx.snapshot()) >= 1, what="a first attempt")
            for group in frames(6, t_ms=t, first_seq=1):
                await gw.publish(*group)
            await gw.drain()

    asyncio.run(go())
    accepted = [r for r in receiver.with_samples() if r.accepted]
    assert order_violations(accepted) == []
    stamps: dict[Key, list[int]] = defaultdict(list)
    for r in accepted:
        for key, sample in r.samples():
            stamps[key].append(sample.timestamp_ms)
    assert all(v == sorted(v) for v in stamps.values()), stamps
    assert set(receiver.accepted_counts().values()) == {1}
    assert len(receiver.accepted_counts()) == 1 + 7 * 8
