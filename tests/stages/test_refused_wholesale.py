"""Refused wholesale or a refused sample (issue 13: "Wrong credentials are a configuration error,
not a sample refusal, so nothing may be dead-lettered or dropped for it"). Before a rejected
request is dead-lettered an empty WriteRequest probes the endpoint (gateway.forward.policy):
accepted, the refusal was about the samples; refused too, the endpoint refuses everything and
pauses with every frame buffered. The receivers sit behind the real client (httpx.MockTransport),
so classification and redaction are part of what is tested."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

import tests.support.factories as f
from gateway.endpoint_config import RemoteWriteEndpoint
from gateway.errors import ForwardUnavailable
from gateway.forward.client import HttpRemoteWriteClient
from gateway.forward.policy import REFUSED_WHOLESALE, replay
from gateway.remote_write.wire import decode_write_request, decompress, encode_entry, encode_labels
from tests.support.forward_harness import (
    CONFIG,
    URL,
    RecordingReceiver,
    Series,
    drain,
    make_forwarder,
    wait_until,
)
from tests.support.pipeline_harness import Harness, birth_msg, tele_msg

PAUSE_CONFIG = dataclasses.replace(CONFIG, paused_probe_s=0.01)
DEVICES, FRAMES = 2, 10
ALL_SAMPLES = DEVICES + DEVICES * FRAMES * 2  # an info sample per birth, 2 per telemetry frame


async def fill(h: Harness, devices: int = DEVICES, frames: int = FRAMES) -> None:
    base = f.now_ms() - 600_000
    await h.pipeline.handle([birth_msg(i) for i in range(devices)])
    for seq in range(frames):
        await h.pipeline.handle([tele_msg(i, seq, base) for i in range(devices)])


def keys(requests: list[Series]) -> Counter[tuple[str, float, int]]:
    return Counter((repr(sorted(labels.items())), v, ts) for series in requests
                   for labels, samples in series for v, ts in samples)


def temperatures(series: Series) -> list[float]:
    return [v for labels, samples in series if labels["__name__"] == "device_temperature_celsius"
            for v, _ in samples]


def metric(h: Harness, name: str, **labels: str) -> float | None:
    return h.metrics.registry.get_sample_value(name, labels)


def test_a_receiver_refusing_everything_with_an_unknown_400_pauses_and_loses_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """(a) 400 "bad token" (no known marker) to every request, the empty one too: nothing is
    dead-lettered, the endpoint pauses, and once the receiver is fixed every frame arrives
    exactly once."""
    h = Harness(tmp_path / "db")
    fixed = asyncio.Event()
    receiver = RecordingReceiver(lambda series: httpx.Response(204) if fixed.is_set()
                                 else httpx.Response(400, text="bad token"))
    caplog.set_level(logging.WARNING, "gateway")

    async def go() -> None:
        await h.open()
        await fill(h)
        forwarder = make_forwarder(h, receiver.client(), config=PAUSE_CONFIG)
        task = asyncio.create_task(forwarder.run())
        await wait_until(lambda: len(receiver.requests) >= 5)
        # The refused request once, then only empty requests: the check, then the probes.
        assert receiver.requests[0] and not any(receiver.requests[1:])
        paused = forwarder.status.paused or ""
        assert paused.startswith(REFUSED_WHOLESALE) and "HTTP 400: bad token" in paused
        assert forwarder.status.last_error and REFUSED_WHOLESALE in forwarder.status.last_error
        assert forwarder.retrying and forwarder.cursor == 0
        assert metric(h, "fleetgate_forward_paused", endpoint=URL) == 1
        # the refused request and the empty one of the check, each counted as rejected
        assert metric(h, "fleetgate_forward_requests_total", endpoint=URL,
                      result="rejected") == 2
        assert h.rows("SELECT COUNT(*) FROM frames") == [(DEVICES + DEVICES * FRAMES,)]
        assert h.rows("SELECT COUNT(*) FROM dead_letters") == [(0,)]
        fixed.set()
        forwarder.begin_drain()
        await asyncio.wait_for(task, 10)
        assert forwarder.cursor == h.buffer.committed_upto
        assert forwarder.status.paused is None
        assert metric(h, "fleetgate_forward_paused", endpoint=URL) == 0
        await h.db.close()

    asyncio.run(go())
    accepted = keys(receiver.accepted)
    assert set(accepted.values()) == {1} and len(accepted) == ALL_SAMPLES
    assert h.rows("SELECT COUNT(*) FROM dead_letters") == [(0,)]
    assert metric(h, "fleetgate_forward_dead_letters_total", endpoint=URL) in (None, 0)
    assert any(REFUSED_WHOLESALE in r.getMessage() and "credentials" in r.getMessage()
               for r in caplog.records)


def test_a_receiver_refusing_one_batch_but_taking_empty_requests_dead_letters_it_once(
        tmp_path: Path) -> None:
    """(b) The refusal is about the samples: the request is dead-lettered once, as before the
    check; the check costs one empty request, and nothing pauses."""
    h = Harness(tmp_path / "db")
    poison = f.sample_value(1, 7)
    receiver = RecordingReceiver(lambda series: httpx.Response(400, text="out of order sample")
                                 if poison in temperatures(series) else httpx.Response(204))

    async def go() -> None:
        await h.open()
        await fill(h, devices=3, frames=40)
        forwarder = make_forwarder(h, receiver.client())
        await drain(forwarder)
        assert forwarder.cursor == h.buffer.committed_upto
        assert forwarder.status.paused is None
        await h.db.close()

    asyncio.run(go())
    refused_at = [i for i, r in enumerate(receiver.requests) if poison in temperatures(r)]
    assert len(refused_at) == 1  # sent once, never again
    assert receiver.requests[refused_at[0] + 1] == []  # the check: an empty request, at once
    assert sum(1 for r in receiver.requests if not r) == 1
    refused = keys([receiver.requests[refused_at[0]]])
    dead = h.rows("SELECT status, reason FROM dead_letters")
    assert len(dead) == sum(refused.values()) > 1
    assert set(dead) == {(400, "HTTP 400: out of order sample")}
    sent = keys(receiver.requests)
    assert set(sent.values()) == {1} and len(sent) == 3 + 3 * 40 * 2
    assert not set(keys(receiver.accepted)) & set(refused)
    assert metric(h, "fleetgate_forward_paused", endpoint=URL) == 0


def test_a_receiver_answering_413_to_everything_pauses_instead_of_dead_lettering_each_sample(
        tmp_path: Path) -> None:
    """A proxy whose size limit lets nothing through: requests shrink to one sample, and that
    one sample is not dead-lettered, since an empty request gets 413 too. Fixed, every frame
    arrives once."""
    h = Harness(tmp_path / "db")
    fixed = asyncio.Event()
    receiver = RecordingReceiver(lambda series: httpx.Response(204) if fixed.is_set()
                                 else httpx.Response(413, text="request entity too large"))

    async def go() -> None:
        await h.open()
        await fill(h)
        forwarder = make_forwarder(h, receiver.client(), config=PAUSE_CONFIG)
        task = asyncio.create_task(forwarder.run())
        await wait_until(lambda: forwarder.status.paused is not None)
        assert forwarder.status.max_samples_per_request == 1
        assert (forwarder.status.paused or "").startswith(REFUSED_WHOLESALE)
        assert h.rows("SELECT COUNT(*) FROM dead_letters") == [(0,)]
        fixed.set()
        forwarder.begin_drain()
        await asyncio.wait_for(task, 10)
        await h.db.close()

    asyncio.run(go())
    accepted = keys(receiver.accepted)
    assert set(accepted.values()) == {1} and len(accepted) == ALL_SAMPLES
    assert h.rows("SELECT COUNT(*) FROM dead_letters") == [(0,)]


@pytest.mark.parametrize(("after_503", "dead_lettered"), [(204, True), (400, False)])
def test_a_check_answered_503_waits_for_a_verdict_without_resending_the_refused_request(
        tmp_path: Path, after_503: int, dead_lettered: bool) -> None:
    """The check's empty request answered 503: no verdict yet. Only the empty request is sent
    again (with backoff) until it is answered: 2xx dead-letters the refused request, a refusal
    pauses the endpoint (and the frames wait, resent once it is fixed)."""
    h = Harness(tmp_path / "db")
    empties = 0
    fixed = asyncio.Event()

    def answer(series: Series) -> httpx.Response:
        nonlocal empties
        if fixed.is_set():
            return httpx.Response(204)
        if series:
            return httpx.Response(400, text="refused")
        empties += 1
        return httpx.Response(503, text="busy") if empties <= 2 else httpx.Response(after_503)

    receiver = RecordingReceiver(answer)

    async def go() -> None:
        await h.open()
        await fill(h, devices=1, frames=3)
        forwarder = make_forwarder(h, receiver.client(), config=PAUSE_CONFIG)
        task = asyncio.create_task(forwarder.run())
        if dead_lettered:
            await wait_until(lambda: forwarder.cursor == h.buffer.committed_upto)
        else:
            await wait_until(lambda: forwarder.status.paused is not None)
            assert [bool(r) for r in receiver.requests[:4]] == [True, False, False, False]
            assert h.rows("SELECT COUNT(*) FROM dead_letters") == [(0,)]
            fixed.set()
        forwarder.begin_drain()
        await asyncio.wait_for(task, 10)
        assert forwarder.status.retries == 2  # the two 503s to the empty request
        await h.db.close()

    asyncio.run(go())
    with_samples = [r for r in receiver.requests if r]
    if dead_lettered:
        assert len(with_samples) == 1  # never resent after its 400
        assert h.rows("SELECT COUNT(*) FROM dead_letters") == [(1 + 3 * 2,)]
    else:
        assert len(with_samples) == 2 and [r for r in receiver.accepted if r] == [with_samples[1]]
        assert h.rows("SELECT COUNT(*) FROM dead_letters") == [(0,)]


def test_a_stop_before_the_check_has_a_verdict_keeps_the_request_buffered(
        tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    receiver = RecordingReceiver(lambda series: httpx.Response(400 if series else 503))

    async def go() -> None:
        await h.open()
        await fill(h, devices=1, frames=3)
        forwarder = make_forwarder(h, receiver.client())
        task = asyncio.create_task(forwarder.run())
        await wait_until(lambda: len(receiver.requests) >= 3)
        forwarder.stop_retrying()
        forwarder.begin_drain()
        await asyncio.wait_for(task, 10)
        assert forwarder.cursor == 0
        await h.db.close()

    asyncio.run(go())
    assert h.rows("SELECT COUNT(*) FROM dead_letters") == [(0,)]
    assert h.rows("SELECT COUNT(*) FROM frames") == [(1 + 3,)]
    assert sum(1 for r in receiver.requests if r) == 1


def test_a_replay_to_an_endpoint_refusing_everything_changes_nothing(tmp_path: Path) -> None:
    """POST /api/v1/dead-letters/replay to an endpoint refusing wholesale: unavailable, the
    letters stay as they are (not refused again one by one)."""
    receiver = RecordingReceiver(lambda series: httpx.Response(400, text="tenant not allowed"))
    taking = RecordingReceiver(lambda series: httpx.Response(400, text="bad sample")
                               if series else httpx.Response(204))
    entry = encode_entry(encode_labels([("__name__", "up")]), 1.0, 1000)
    letters = [(1, entry), (2, entry)]

    async def go() -> tuple[list[int], list[tuple[int, str, int]]]:
        client = receiver.client()
        try:
            with pytest.raises(ForwardUnavailable, match="refused wholesale"):
                await replay(client, URL, letters)
        finally:
            await client.aclose()
        other = taking.client()
        try:
            return await replay(other, URL, letters)
        finally:
            await other.aclose()

    delivered, refused = asyncio.run(go())
    assert [bool(r) for r in receiver.requests] == [True, False]  # the letters, the check
    assert delivered == [] and [i for *_, i in refused] == [1, 2]
    assert [bool(r) for r in taking.requests] == [True, False, True, True]  # one check only


def rewrite(path: Path, value: str) -> None:
    before = path.stat().st_mtime_ns
    path.write_text(value + "\n")
    os.utime(path, ns=(before + 10**9, before + 10**9))


@pytest.mark.parametrize("refusal", [
    pytest.param(lambda sent: httpx.Response(
        400, text=f'cannot find the provided auth token "Bearer {sent}" in config\n'),
        id="vmauth-1.79-400"),
    pytest.param(lambda sent: httpx.Response(400, text=f"token {sent} is not valid"),
                 id="unknown-400-echoing-the-token"),
])
def test_a_wrong_token_pauses_without_being_logged_and_a_rewritten_file_resumes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        refusal: Callable[[str], httpx.Response]) -> None:
    """Wrong credentials during a run, then fixed by rewriting the token file (no restart): 0
    lost, 0 doubled, 0 dead letters, and the token in no log, pause reason or last_error."""
    caplog.set_level(logging.DEBUG)
    wrong, good = "tok-WRONG-5c1e9d", "tok-good-77aa02"
    token = tmp_path / "token"
    token.write_text(wrong + "\n")
    requests: list[Series] = []
    accepted: list[Series] = []

    def handle(request: httpx.Request) -> httpx.Response:
        series = decode_write_request(decompress(request.content))
        requests.append(series)
        sent = request.headers["Authorization"].removeprefix("Bearer ")
        if sent != good:
            return refusal(sent)
        accepted.append(series)
        return httpx.Response(204)

    target = RemoteWriteEndpoint(url=URL, name="vm", bearer_token_file=token)
    client = HttpRemoteWriteClient(target, transport=httpx.MockTransport(handle))
    h = Harness(tmp_path / "db")
    reasons: list[str] = []

    async def go() -> None:
        await h.open()
        await fill(h)
        forwarder = make_forwarder(h, client, config=PAUSE_CONFIG, endpoints=("vm",))
        task = asyncio.create_task(forwarder.run())
        await wait_until(lambda: len(requests) >= 4)
        reasons.extend([forwarder.status.paused or "", forwarder.status.last_error or ""])
        assert metric(h, "fleetgate_forward_paused", endpoint="vm") == 1
        rewrite(token, good)
        await wait_until(lambda: forwarder.status.paused is None)
        forwarder.begin_drain()
        await asyncio.wait_for(task, 10)
        assert forwarder.cursor == h.buffer.committed_upto
        await h.db.close()

    asyncio.run(go())
    assert all(r and "HTTP 400" in r and wrong not in r for r in reasons), reasons
    accepted_keys = keys(accepted)
    assert set(accepted_keys.values()) == {1} and len(accepted_keys) == ALL_SAMPLES
    assert h.rows("SELECT COUNT(*) FROM dead_letters") == [(0,)]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "paused" in logged and "HTTP 400" in logged
    assert wrong not in logged and good not in logged
