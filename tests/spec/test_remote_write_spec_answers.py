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
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from tests.spec.device_frames import birth_msg, now_ms, tele_msg
from tests.spec.gateway_rig import LocalGateway, run_through
from tests.spec.rw_receiver import RecordingReceiver, Reply, Request
from tests.spec.spec_cases import Key, frames, intervals, order_violations, sample_set

VMAUTH_WRONG_TOKEN = b'cannot find the provided auth token "Bearer wr0ng" in config'
PAUSE_OBSERVED_S = 0.5  # with retries every <= 0.05 s, a resend would show ~10 times over


# ---------------------------------------------------------------------- retried answers
def test_retries_5xx_with_growing_backoff(tmp_path: Path, receiver: RecordingReceiver) -> None:
    """5xx is retried, the same samples each time, each wait longer than the one before
    (exponential backoff; jitter must not make a wait shorter: issue 11, finding 12)."""
    receiver.script(Reply(500, b"internal"), Reply(502), Reply(503, b"busy"), Reply(504))
    run_through(tmp_path / "buffer.db", receiver.url, [birth_msg()], *frames(2, t_ms=now_ms()),
                retry_min_s=0.1, retry_max_s=5.0)
    requests = receiver.with_samples()
    assert [r.status for r in requests] == [500, 502, 503, 504, 204]
    assert len({r.body for r in requests}) == 1, "every attempt carries the same samples"
    waits = intervals(requests)
    # The base doubles from retry_min_s and jitter takes at most a fifth of it, so each wait
    # has a floor that doubles. Floors only: a loaded machine stretches waits, never shortens.
    floors = [0.1 * 2**i * 0.75 for i in range(len(waits))]
    assert all(w >= floor for w, floor in zip(waits, floors, strict=True)), \
        f"waits {[round(w, 3) for w in waits]} below the growing floors {floors}"


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


# ---------------------------------------------------------------------- refused data
def refused_once(tmp_path: Path, receiver: RecordingReceiver, status: int,
                 reason: bytes = b"out of order sample") -> None:
    """The whole refused request goes to the dead letters with the receiver's reason, sent
    exactly once: no resend, no splitting (a receiver may already have written the good part
    of a partial write: issue 11, finding 10). Later frames still flow."""
    receiver.script(Reply(status, reason))
    t = now_ms() - 60_000

    async def go() -> LocalGateway:
        async with LocalGateway(tmp_path / "buffer.db", receiver.url) as gw:
            for group in [[birth_msg()], *frames(3, t_ms=t)]:
                await gw.publish(*group)
            await gw.drain()
            for group in frames(2, t_ms=t, first_seq=3):
                await gw.publish(*group)
            await gw.drain()
        return gw

    gw = asyncio.run(go())
    requests = receiver.with_samples()
    refused = requests[0]
    assert refused.status == status
    refused_samples = sample_set([refused])
    resent = sample_set(requests[1:]) & refused_samples
    assert not resent, f"refused samples sent again: {receiver.describe()}"
    assert Counter((key, s.timestamp_ms, s.bits)
                   for key, s in gw.dead_letter_samples()) == refused_samples
    assert all(reason.decode() in text for text in gw.dead_letter_reasons())
    accepted = receiver.accepted_counts()
    assert set(accepted.values()) == {1} and not set(accepted) & set(refused_samples)


def test_no_retry_on_400(tmp_path: Path, receiver: RecordingReceiver) -> None:
    refused_once(tmp_path, receiver, 400)


def test_no_retry_on_422(tmp_path: Path, receiver: RecordingReceiver) -> None:
    refused_once(tmp_path, receiver, 422)


@pytest.mark.parametrize("reason", [b"too old sample", b"out of bounds",
                                    b'label name "a" is not unique: invalid sample'],
                         ids=["too-old-sample", "out-of-bounds", "invalid-sample"])
def test_prometheus_permanent_500_is_refused_not_retried(
        tmp_path: Path, receiver: RecordingReceiver, reason: bytes) -> None:
    """Beyond the spec, deliberately (docs/operations.md, section 8): Prometheus 2.42 answers
    500 to samples it will never take; retried, they would block the queue forever."""
    refused_once(tmp_path, receiver, 500, reason)


def test_a_refused_part_of_a_split_frame_is_dead_lettered_alone(
        tmp_path: Path, receiver: RecordingReceiver) -> None:
    """A 400 to one request of a frame split across several: that request is dead-lettered,
    sent once; the frame's other parts are delivered once each."""
    receiver.script(Reply(204), Reply(400, b"out of order sample"))
    big = tele_msg(0, [["channel_volts", float(i), 0, {"ch": str(i)}] for i in range(200)],
                   t_ms=now_ms() - 60_000)
    gw = run_through(tmp_path / "buffer.db", receiver.url, [birth_msg()], [big],
                     max_samples_per_request=50)
    requests = receiver.with_samples()
    refused = [r for r in requests if r.status == 400]
    assert len(refused) == 1 and refused[0].sample_count, receiver.describe()
    assert Counter((key, s.timestamp_ms, s.bits)
                   for key, s in gw.dead_letter_samples()) == sample_set(refused)
    accepted = receiver.accepted_counts()
    assert set(accepted.values()) == {1}
    assert len(accepted) + refused[0].sample_count == 1 + 200
    assert not set(accepted) & set(sample_set(refused))


def test_413_lowers_request_size_and_never_resends_accepted_samples(
        tmp_path: Path, receiver: RecordingReceiver) -> None:
    """413 (request too large) lowers the endpoint's request size: requests after it fit, and
    no accepted sample is ever sent again (beyond the spec, which only forbids the retry)."""
    limit = 20
    receiver.responder = lambda r: (Reply(413, b"request entity too large")
                                    if r.sample_count > limit else Reply(204))
    t = now_ms() - 60_000

    async def go() -> None:
        async with LocalGateway(tmp_path / "buffer.db", receiver.url,
                                max_samples_per_request=200) as gw:
            await gw.publish(birth_msg())
            for group in frames(10, t_ms=t):
                await gw.publish(*group)
            await gw.drain()
            first_round = len(receiver.snapshot())
            for group in frames(10, t_ms=t, first_seq=10):
                await gw.publish(*group)
            await gw.drain()
            later = receiver.snapshot()[first_round:]
            assert all(r.status != 413 for r in later), \
                f"the size was not lowered: {receiver.describe(later)}"

    asyncio.run(go())
    accepted = receiver.accepted_counts()
    assert set(accepted.values()) == {1}
    assert len(accepted) == 1 + 20 * 8  # the birth's info sample, 20 frames of 8 samples
    assert sum(r.status == 413 for r in receiver.snapshot()) <= 3, receiver.describe()


# ---------------------------------------------------------------------- configuration errors
PAUSING = [pytest.param(Reply(401, b"unauthorized"), id="401"),
           pytest.param(Reply(403, b"forbidden"), id="403"),
           pytest.param(Reply(404, b"404 page not found"), id="404"),
           pytest.param(Reply(405, b"method not allowed"), id="405"),
           pytest.param(Reply(307, headers=(("Location", "http://127.0.0.1:9/login"),)),
                        id="307-redirect"),
           pytest.param(Reply(400, VMAUTH_WRONG_TOKEN), id="vmauth-wrong-token-400")]


@pytest.mark.parametrize("refusal", PAUSING)
def test_401_403_404_pause_the_endpoint_and_keep_every_frame(
        tmp_path: Path, receiver: RecordingReceiver, refusal: Reply) -> None:
    """An answer that says the endpoint is misconfigured (credentials, URL; vmauth 1.79 says
    a wrong token with a 400) is no data error: nothing is dead-lettered or resent, every frame
    stays buffered, and the endpoint resumes, found by a probe that carries no samples, once
    the receiver accepts (issue 11, finding 10)."""
    receiver.default = refusal
    t = now_ms() - 60_000

    async def go() -> None:
        async with LocalGateway(tmp_path / "buffer.db", receiver.url,
                                paused_probe_s=0.05) as gw:
            gw.start()
            await gw.publish(birth_msg())
            for group in frames(3, t_ms=t):
                await gw.publish(*group)
            await receiver.until(lambda rx: any(r.status for r in rx.with_samples()),
                                 what="a refused write")
            await asyncio.sleep(PAUSE_OBSERVED_S)  # an absence: no resend while paused
            assert len(receiver.with_samples()) == 1, receiver.describe()
            assert gw.dead_letter_samples() == []
            assert gw.frames_buffered() == 4
            assert gw.paused_gauge() == 1, "the pause shows on /metrics"
            assert f"HTTP {refusal.status}" in (gw.forwarder.status.paused or ""), \
                "the pause and the receiver's answer show in the endpoint's status"
            receiver.default = Reply(204)
            await receiver.until(lambda rx: len(rx.accepted_counts()) == 1 + 3 * 8,
                                 within_s=30, what="every sample accepted after the pause")
            await gw.drain()
            assert gw.paused_gauge() == 0 and gw.forwarder.status.paused is None

    asyncio.run(go())
    requests = receiver.snapshot()
    refused_at = next(i for i, r in enumerate(requests) if r.sample_count)
    resumed_at = next(i for i, r in enumerate(requests) if r.accepted and r.sample_count)
    probes = requests[refused_at + 1:resumed_at]
    assert all(r.sample_count == 0 for r in probes), receiver.describe(probes)
    assert set(receiver.accepted_counts().values()) == {1}
