"""The forwarder against a fake endpoint, over a real SQLite buffer filled by the pipeline."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

import tests.support.factories as f
from gateway.buffer.entry_cache import EntryCache
from gateway.forward.forwarder import Forwarder, Resume
from gateway.settings import ForwardConfig
from tests.support.fakes import Accepted, FakeRemoteWrite, Rejected, Retryable
from tests.support.pipeline_harness import Harness, birth_msg, tele_msg

CONFIG = ForwardConfig(endpoints=("fake://endpoint",), max_samples_per_request=50,
                       flush_deadline_s=0.0, request_timeout_s=1.0, retry_min_s=0.001,
                       retry_max_s=0.01, external_labels=(), shutdown_deadline_s=1.0)


def make_forwarder(h: Harness, client: FakeRemoteWrite, *, cache: EntryCache | None = None,
                   cursor: int = 0, endpoints: tuple[str, ...] = CONFIG.endpoints,
                   config: ForwardConfig = CONFIG,
                   live_lane: tuple[int, int] | None = None) -> Forwarder:
    freed: list[tuple[int, int]] = []
    buffer = h.buffer_for(endpoints, cache)
    account = buffer.freed

    def record(frames: int, size: int) -> None:
        freed.append((frames, size))
        account(frames, size)

    buffer.freed = record  # type: ignore[method-assign]
    forwarder = Forwarder(endpoint=client.endpoint, client=client, buffer=buffer, config=config,
                          metrics=h.metrics, resume=Resume(cursor=cursor, live_lane=live_lane))
    forwarder.freed_log = freed  # type: ignore[attr-defined]
    return forwarder


async def wait_until(condition: Callable[[], bool], within_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def drain(forwarder: Forwarder) -> None:
    forwarder.begin_drain()
    await asyncio.wait_for(forwarder.run(), 10)


async def fill(h: Harness, devices: int, frames: int) -> None:
    base = f.now_ms() - 600_000
    await h.pipeline.handle([birth_msg(i) for i in range(devices)])
    for seq in range(frames):
        await h.pipeline.handle([tele_msg(i, seq, base) for i in range(devices)])


def values_of(series: list[tuple[dict[str, str], list[tuple[float, int]]]],
              name: str) -> list[float]:
    return [v for labels, samples in series if labels["__name__"] == name for v, _ in samples]


def test_delivers_everything_once_in_order_and_frees_the_buffer(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    client = FakeRemoteWrite()

    async def go() -> None:
        await h.open()
        await fill(h, devices=3, frames=40)
        forwarder = make_forwarder(h, client)
        await drain(forwarder)
        assert forwarder.cursor == h.buffer.committed_upto
        assert sum(n for n, _ in forwarder.freed_log) == 3 + 3 * 40  # type: ignore[attr-defined]
        await h.db.close()

    asyncio.run(go())
    temps = values_of(client.accepted, "device_temperature_celsius")
    assert sorted(temps) == sorted(f.sample_value(i, s) for i in range(3) for s in range(40))
    for i in range(3):  # per series, in seq order
        mine = [v for v in temps if int(v) // 100_000 == i]
        assert mine == sorted(mine)
    assert len(values_of(client.accepted, "fleet_device_info")) == 3
    assert all(len(r) <= 50 for r in client.requests)
    assert h.rows("SELECT COUNT(*) FROM frames") == [(0,)]


def test_retryable_failures_are_retried_until_accepted(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    outcomes = [Retryable(503, "busy", 0.001), Retryable(None, "ConnectError", None)]
    client = FakeRemoteWrite(lambda series: outcomes.pop(0) if outcomes else Accepted(204))

    async def go() -> None:
        await h.open()
        await fill(h, devices=1, frames=5)
        await drain(make_forwarder(h, client))
        await h.db.close()

    asyncio.run(go())
    assert len(client.requests) == 3  # the same batch three times, accepted once
    assert values_of(client.accepted, "inference_total") == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert h.metrics.registry.get_sample_value(
        "fleetgate_forward_retries_total", {"endpoint": client.endpoint}) == 2


def test_refused_requests_are_dead_lettered_whole_and_never_sent_again(tmp_path: Path) -> None:
    # Was: split in halves until the refused samples were isolated (resending the rest, which
    # remote-write 1.0 forbids after a 4xx). Now the whole request is dead-lettered once.
    h = Harness(tmp_path / "db")
    poison = {f.sample_value(1, 7), f.sample_value(2, 30)}

    def respond(series: list[tuple[dict[str, str], list[tuple[float, int]]]]) -> object:
        if any(v in poison for _, samples in series for v, _ in samples):
            return Rejected(400, "out of order sample")
        return Accepted(204)

    client = FakeRemoteWrite(respond)  # type: ignore[arg-type]

    async def go() -> None:
        await h.open()
        await fill(h, devices=3, frames=40)
        await drain(make_forwarder(h, client))
        await h.db.close()

    asyncio.run(go())
    refused = [r for r in client.requests if values_of(r, "device_temperature_celsius")
               and set(values_of(r, "device_temperature_celsius")) & poison]
    assert len(refused) == 2
    sent = [v for r in client.requests for v in values_of(r, "device_temperature_celsius")]
    # each sample sent exactly once: no bisecting, no resend
    assert sorted(sent) == sorted(f.sample_value(i, s) for i in range(3) for s in range(40))
    dead = h.rows("SELECT status, reason, series FROM dead_letters ORDER BY id")
    assert len(dead) == sum(len(samples) for r in refused for _, samples in r)
    assert all(status == 400 and reason == "out of order sample" for status, reason, _ in dead)
    assert any('device_id="dev-0001"' in series and "100007.0" in series for *_, series in dead)


def test_read_back_after_restart_sends_the_same_series_as_the_live_path(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    live, cold = FakeRemoteWrite(), FakeRemoteWrite()
    live.endpoint, cold.endpoint = "fake://live", "fake://cold"  # type: ignore[misc]
    both = (live.endpoint, cold.endpoint)

    async def go() -> None:
        await h.open()
        await fill(h, devices=2, frames=10)
        # Two forwarders: one with the warm cache, one as after a restart (empty cache).
        await drain(make_forwarder(h, live, endpoints=both))
        await drain(make_forwarder(h, cold, cache=EntryCache(), endpoints=both))
        await h.db.close()

    asyncio.run(go())
    assert len(cold.accepted) == len(live.accepted) > 0
    assert sorted(map(repr, cold.accepted)) == sorted(map(repr, live.accepted))


def test_read_back_moves_a_clock_ahead_back_as_the_live_path_did(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    live, cold = FakeRemoteWrite(), FakeRemoteWrite()
    live.endpoint, cold.endpoint = "fake://live", "fake://cold"  # type: ignore[misc]
    both = (live.endpoint, cold.endpoint)
    day_ms, now = 86_400_000, f.now_ms()

    async def go() -> None:
        await h.open()
        await h.pipeline.handle([birth_msg(1, time_ms=now + day_ms),
                                 *[tele_msg(1, s, now + day_ms - 10_000) for s in range(5)]])
        await drain(make_forwarder(h, live, endpoints=both))
        await drain(make_forwarder(h, cold, cache=EntryCache(), endpoints=both))
        await h.db.close()

    asyncio.run(go())
    stamps = [ts for labels, samples in cold.accepted for _, ts in samples
              if labels["__name__"] == "device_temperature_celsius"]
    assert len(stamps) == 5 and all(abs(ts - now) < 20_000 for ts in stamps)
    assert sorted(map(repr, cold.accepted)) == sorted(map(repr, live.accepted))


def test_stop_while_the_endpoint_is_down_keeps_the_cursor_and_the_frames(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    client = FakeRemoteWrite(lambda series: Retryable(503, "down", None))

    async def go() -> None:
        await h.open()
        await fill(h, devices=1, frames=5)
        forwarder = make_forwarder(h, client)
        task = asyncio.ensure_future(forwarder.run())
        await wait_until(lambda: len(client.requests) >= 3)
        forwarder.stop_retrying()
        await asyncio.wait_for(task, 5)
        assert forwarder.cursor == 0
        await h.db.close()

    asyncio.run(go())
    assert h.rows("SELECT COUNT(*) FROM frames") == [(6,)]


def test_read_back_reads_each_row_once_and_keeps_order(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.buffer import store

    h = Harness(tmp_path / "db")
    client = FakeRemoteWrite()
    rows_read: list[int] = []
    real_fetch = store.fetch_frames

    def counting_fetch(conn, after_id, limit):  # type: ignore[no-untyped-def]
        rows = real_fetch(conn, after_id, limit)
        rows_read.extend(row.id for row in rows)
        return rows

    monkeypatch.setattr(store, "fetch_frames", counting_fetch)

    async def go() -> None:
        await h.open()
        await fill(h, devices=3, frames=100)
        # as after a restart: nothing cached, every frame read back (50 samples a request)
        await drain(make_forwarder(h, client, cache=EntryCache()))
        await h.db.close()

    asyncio.run(go())
    assert sorted(rows_read) == list(range(1, 3 + 3 * 100 + 1))  # each row read once
    temps = values_of(client.accepted, "device_temperature_celsius")
    assert sorted(temps) == sorted(f.sample_value(i, s) for i in range(3) for s in range(100))
    for i in range(3):  # per series, in seq order
        mine = [v for v in temps if int(v) // 100_000 == i]
        assert mine == sorted(mine)


class SlowRemoteWrite(FakeRemoteWrite):
    """A receiver that takes a little while per request, so live frames arrive mid-drain."""

    async def send(self, compressed_body: bytes):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0.01)
        return await super().send(compressed_body)


LIVE_FIRST = dataclasses.replace(CONFIG, live_first=True)


def temperature_seqs(requests: list[list[tuple[dict[str, str], list[tuple[float, int]]]]],
                     ) -> list[list[tuple[int, int]]]:
    """(device, seq) of every temperature sample, request by request."""
    return [[(int(v) // 100_000, int(v) % 100_000) for labels, samples in series
             if labels["__name__"] == "device_temperature_celsius" for v, _ in samples]
            for series in requests]


def live_lane_harness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Harness:
    """A pipeline whose entry cache is too small for the backlog (so it is read back from
    SQLite) and a live-lane threshold a small test backlog exceeds."""
    from gateway.forward import forwarder as forwarder_module

    monkeypatch.setattr(forwarder_module, "LIVE_LANE_MIN_BACKLOG", 20)
    h = Harness(tmp_path / "db")
    h.cache = EntryCache(max_samples=40)
    return h


async def start_backlog_and_live(h: Harness, forwarder: Forwarder, client: FakeRemoteWrite,
                                 base: int) -> asyncio.Task[None]:
    task = asyncio.create_task(forwarder.run())
    await wait_until(lambda: len(client.requests) >= 2)  # draining the backlog by now
    await h.pipeline.handle([tele_msg(i, s, base) for s in range(100, 110) for i in range(3)])
    return task


def test_live_lane_sends_new_frames_ahead_of_the_backlog_each_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = live_lane_harness(tmp_path, monkeypatch)
    client = SlowRemoteWrite()
    base = f.now_ms() - 600_000

    async def go() -> None:
        await h.open()
        await fill(h, devices=3, frames=100)
        forwarder = make_forwarder(h, client, config=LIVE_FIRST)
        task = await start_backlog_and_live(h, forwarder, client, base)
        forwarder.begin_drain()
        await asyncio.wait_for(task, 10)
        assert forwarder.cursor == h.buffer.committed_upto
        assert forwarder.status.live_lane is None
        assert h.rows("SELECT live_from, live_upto FROM cursors") == [(None, None)]
        await h.db.close()

    asyncio.run(go())
    per_request = temperature_seqs(client.requests)
    sent = [x for request in per_request for x in request]
    assert sorted(sent) == sorted((i, s) for i in range(3) for s in range(110))  # each once
    first_live = next(n for n, r in enumerate(per_request) if any(s >= 100 for _, s in r))
    last_backlog = max(n for n, r in enumerate(per_request) if any(s < 100 for _, s in r))
    assert first_live < last_backlog  # the live frames did not wait for the backlog


def test_a_live_lane_survives_a_kill_and_nothing_is_lost(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.buffer import store

    h = live_lane_harness(tmp_path, monkeypatch)
    before, after = SlowRemoteWrite(), SlowRemoteWrite()
    base = f.now_ms() - 600_000
    lanes: list[dict[str, tuple[int, int]]] = []

    async def go() -> None:
        await h.open()
        await fill(h, devices=3, frames=100)
        forwarder = make_forwarder(h, before, config=LIVE_FIRST)
        task = await start_backlog_and_live(h, forwarder, before, base)
        await wait_until(lambda: forwarder.status.live_lane is not None
                         and forwarder.status.live_lane[1] > forwarder.status.live_lane[0])
        task.cancel()  # as a kill: whatever was committed is all that is known
        with contextlib.suppress(asyncio.CancelledError):
            await task
        state = await h.db.read(store.load_state)
        lanes.append(state.live_lanes)
        endpoint = before.endpoint
        restarted = make_forwarder(h, after, cursor=state.cursors[endpoint],
                                   live_lane=state.live_lanes.get(endpoint))
        await drain(restarted)
        assert restarted.cursor == h.buffer.committed_upto
        await h.db.close()

    asyncio.run(go())
    assert lanes[0]  # the lane was on disk when the gateway "died"
    sent = Counter(x for client in (before, after)
                   for request in temperature_seqs(client.requests) for x in request)
    assert set(sent) == {(i, s) for i in range(3) for s in range(110)}  # nothing lost
    assert sum(c - 1 for c in sent.values()) <= CONFIG.max_samples_per_request  # one batch
