"""What the forwarder does per class of receiver answer (docs/operations.md, "Receiver answers"):
remote-write 1.0 says a sender MUST NOT retry a 4xx other than 429. The answers come from a
recording receiver behind the real HTTP client, so `classify` is part of what is tested."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import Counter
from pathlib import Path

import httpx
import pytest

import tests.support.factories as f
from devstack import Prometheus, VictoriaMetrics
from gateway.forward.client import HttpRemoteWriteClient
from gateway.remote_write.wire import compress
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

VMAUTH_WRONG_TOKEN = 'cannot find the provided auth token "Bearer s3cret-typo" in config\n'


async def fill(h: Harness, devices: int, frames: int) -> None:
    base = f.now_ms() - 600_000
    await h.pipeline.handle([birth_msg(i) for i in range(devices)])
    for seq in range(frames):
        await h.pipeline.handle([tele_msg(i, seq, base) for i in range(devices)])


def values(series: Series) -> list[float]:
    return [v for labels, samples in series if labels["__name__"] == "device_temperature_celsius"
            for v, _ in samples]


def all_sample_keys(h_requests: list[Series]) -> Counter[tuple[str, float, int]]:
    return Counter((repr(sorted(labels.items())), v, ts) for series in h_requests
                   for labels, samples in series for v, ts in samples)


def test_a_400_dead_letters_the_whole_request_once_and_resends_nothing(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    poison = f.sample_value(1, 7)
    receiver = RecordingReceiver(lambda series: httpx.Response(400, text="out of order sample")
                                 if poison in values(series) else httpx.Response(204))

    async def go() -> None:
        await h.open()
        await fill(h, devices=3, frames=40)
        forwarder = make_forwarder(h, receiver.client())
        await drain(forwarder)
        assert forwarder.cursor == h.buffer.committed_upto
        await h.db.close()

    asyncio.run(go())
    sent = all_sample_keys(receiver.requests)
    assert max(sent.values()) == 1  # no sample went out twice: no bisecting, no resend
    refused = [r for r in receiver.requests if poison in values(r)]
    assert len(refused) == 1
    refused_samples = sum(len(samples) for _, samples in refused[0])
    dead = h.rows("SELECT status, reason FROM dead_letters")
    assert len(dead) == refused_samples > 1  # the whole request, one row per sample
    assert set(dead) == {(400, "HTTP 400: out of order sample")}
    assert sum(len(s) for r in receiver.accepted for _, s in r) + refused_samples == len(sent)


def test_a_413_shrinks_the_endpoints_requests_and_resends_only_what_was_refused(
        tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")

    def answer(series: Series) -> httpx.Response:
        size = sum(len(samples) for _, samples in series)
        return httpx.Response(413, text="too big") if size > 20 else httpx.Response(204)

    receiver = RecordingReceiver(answer)

    async def go() -> None:
        await h.open()
        await fill(h, devices=3, frames=40)
        forwarder = make_forwarder(h, receiver.client())
        await drain(forwarder)
        # 49 samples (whole 2-sample frames) -> 413: at most 24 -> 23 -> 413: 11, remembered
        assert forwarder.status.max_samples_per_request == 11
        await h.db.close()

    asyncio.run(go())
    accepted = all_sample_keys(receiver.accepted)
    assert max(accepted.values()) == 1 and len(accepted) == 3 + 3 * 40 * 2  # each once
    sizes = [sum(len(s) for _, s in r) for r in receiver.requests]
    assert sizes[:3] == [49, 23, 11] and max(sizes[3:]) <= 11  # smaller for good after a 413
    assert h.metrics.registry.get_sample_value(
        "fleetgate_forward_request_samples_max", {"endpoint": URL}) == 11
    assert h.rows("SELECT COUNT(*) FROM dead_letters") == [(0,)]


def test_a_single_sample_still_too_large_is_dead_lettered(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    huge = f.sample_value(2, 3)
    receiver = RecordingReceiver(lambda series: httpx.Response(413) if huge in values(series)
                                 else httpx.Response(204))

    async def go() -> None:
        await h.open()
        await fill(h, devices=3, frames=10)
        await drain(make_forwarder(h, receiver.client()))
        await h.db.close()

    asyncio.run(go())
    dead = h.rows("SELECT status, series FROM dead_letters")
    assert len(dead) == 1 and dead[0][0] == 413 and str(huge) in dead[0][1]
    accepted = all_sample_keys(receiver.accepted)
    assert max(accepted.values()) == 1 and len(accepted) == 3 + 3 * 10 * 2 - 1


def paused_gauge(h: Harness) -> float | None:
    return h.metrics.registry.get_sample_value("fleetgate_forward_paused", {"endpoint": URL})


@pytest.mark.parametrize(("status", "body"), [
    (401, "Unauthorized"), (403, "forbidden"), (404, "remote write receiver needs to be enabled"),
    (405, ""), (407, ""), (302, ""), (400, VMAUTH_WRONG_TOKEN)])
def test_a_configuration_error_pauses_the_endpoint_until_an_empty_probe_succeeds(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, status: int, body: str) -> None:
    h = Harness(tmp_path / "db")
    fixed = asyncio.Event()
    receiver = RecordingReceiver(lambda series: httpx.Response(204) if fixed.is_set()
                                 else httpx.Response(status, text=body))
    config = dataclasses.replace(CONFIG, paused_probe_s=0.01)
    caplog.set_level(logging.WARNING, "gateway")

    async def go() -> None:
        await h.open()
        await fill(h, devices=2, frames=10)
        forwarder = make_forwarder(h, receiver.client(), config=config)
        task = asyncio.create_task(forwarder.run())
        await wait_until(lambda: len(receiver.requests) >= 4)
        # Paused: the refused request once, then only empty probes; nothing moved or dropped.
        assert receiver.requests[0] and not any(receiver.requests[1:])
        assert forwarder.cursor == 0 and forwarder.status.paused is not None
        assert f"HTTP {status}" in forwarder.status.paused
        assert paused_gauge(h) == 1
        assert h.rows("SELECT COUNT(*) FROM frames") == [(2 + 2 * 10,)]
        assert h.rows("SELECT COUNT(*) FROM dead_letters") == [(0,)]
        fixed.set()  # the credentials were fixed
        forwarder.begin_drain()
        await asyncio.wait_for(task, 10)
        assert forwarder.cursor == h.buffer.committed_upto
        assert forwarder.status.paused is None and paused_gauge(h) == 0
        await h.db.close()

    asyncio.run(go())
    accepted = all_sample_keys(receiver.accepted)
    assert max(accepted.values()) == 1 and len(accepted) == 2 + 2 * 10 * 2
    assert any("paused" in r.message and "credentials" in r.message for r in caplog.records)


@pytest.mark.e2e
@pytest.mark.parametrize("service", ["prometheus", "victoria_metrics"])
def test_real_receivers_answer_the_pause_probe_an_empty_write_request_with_204(
        service: str, request: pytest.FixtureRequest) -> None:
    """The probe of a paused endpoint is a WriteRequest with no timeseries: no sample is sent
    again, and Prometheus 2.42 and VictoriaMetrics 1.79 both answer it 204."""
    receiver: Prometheus | VictoriaMetrics = request.getfixturevalue(service)

    async def probe() -> int:
        client = HttpRemoteWriteClient(receiver.remote_write_url)
        try:
            result = await client.send(compress(b""))
        finally:
            await client.aclose()
        return result.status  # type: ignore[return-value]

    assert asyncio.run(probe()) == 204


def test_a_refused_request_is_not_sent_again_when_its_dead_letters_cannot_be_written_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    from gateway.buffer import store

    h = Harness(tmp_path / "db")
    # refuses samples, not the endpoint: an empty request (the wholesale check) is accepted
    receiver = RecordingReceiver(lambda series: httpx.Response(400, text="bad sample")
                                 if series else httpx.Response(204))
    failures = [sqlite3.OperationalError("database or disk is full")]
    real_add = store.add_dead_letters

    def add_dead_letters(conn, rows):  # type: ignore[no-untyped-def]
        if failures:
            raise failures.pop()
        real_add(conn, rows)

    monkeypatch.setattr(store, "add_dead_letters", add_dead_letters)

    async def go() -> None:
        await h.open()
        await fill(h, devices=1, frames=3)
        await drain(make_forwarder(h, receiver.client()))
        await h.db.close()

    asyncio.run(go())
    assert len([r for r in receiver.requests if r]) == 1  # refused once, never sent again
    assert h.rows("SELECT COUNT(*) FROM dead_letters") == [(1 + 3 * 2,)]
