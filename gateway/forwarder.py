"""One forwarder per remote-write endpoint: frames after its cursor -> requests -> cursor.

Order: a single request in flight per endpoint and frames taken in id (commit) order, so the
samples of every series reach the endpoint in the order the gateway stored them. While a
request is in flight the next batch is prepared (read back from SQLite and encoded when it is no
longer in the entry cache), so the gateway's CPU and the receiver's overlap during a drain.

Outcomes of a request:
- accepted: the cursor moves past its frames (own transaction; frames every endpoint has passed
  are deleted there too);
- retryable (network, 5xx, 429): retried forever with jittered exponential backoff, honouring
  Retry-After; the cursor stays, so nothing is lost whatever the outage;
- rejected (4xx): the batch is split in halves until the refused samples are isolated; those go
  to the dead-letter table with the endpoint's reason, the rest are delivered.

The one at-least-once window: a kill between a 2xx and the cursor commit resends that batch.

Live lane (remote_write_live_first, for receivers that accept out-of-order samples): when the
forwarder finds itself draining a backlog of more than LIVE_LANE_MIN_BACKLOG frames from SQLite,
it opens a live lane at the newest committed frame and alternates requests: new frames, then a
backlog batch. The lane's range (live_from, live_upto] is committed after each live request like
the cursor, so a kill resends at most one batch either way; when the backlog reaches live_from
the cursor jumps to live_upto and the lane closes. Per series, samples then arrive out of order
(the backlog after newer live samples): hence off by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain

from tenacity import AsyncRetrying, RetryCallState, retry_if_result, stop_never
from tenacity.wait import wait_random_exponential

from device_protocol import ProtocolError, decode_birth, decode_telemetry_rows
from gateway import store
from gateway.births import BirthRegistry, shifted
from gateway.db import Database
from gateway.entry_cache import EntryCache
from gateway.errors import ForwardUnavailable, StoreError
from gateway.frame_compiler import FrameCompiler
from gateway.metrics import GatewayMetrics
from gateway.remote_write import (
    LabelValidationError,
    compress,
    decode_write_request,
    split_entries,
)
from gateway.remote_write_client import Accepted, Rejected, RemoteWriteClient, Retryable
from gateway.settings import ForwardConfig

log = logging.getLogger(__name__)

Item = tuple[int, bytes]  # (frame id, one encoded TimeSeries entry)
Frame = tuple[int, Sequence[bytes]]  # (frame id, its entries)
FETCH_FRAMES = 2000  # rows per read-back from SQLite when behind the cache
LIVE_LANE_MIN_BACKLOG = 5000  # frames behind, read back from SQLite, before live goes first
Batch = tuple[list[Frame], int, bool]  # (frames, last frame id, full)


@dataclass(slots=True)
class ForwarderStatus:
    cursor: int
    sent_samples: int = 0
    dead_letters: int = 0
    retries: int = 0
    last_error: str | None = None
    last_success_ms: int | None = None
    live_lane: tuple[int, int] | None = None  # (live_from, live_upto) while one is open


class Forwarder:
    def __init__(self, *, endpoint: str, client: RemoteWriteClient, db: Database,
                 config: ForwardConfig, cache: EntryCache, births: BirthRegistry,
                 compiler: FrameCompiler, metrics: GatewayMetrics, cursor: int,
                 all_endpoints: Sequence[str], committed_upto: Callable[[], int],
                 on_progress: Callable[[int, int], None],
                 live_lane: tuple[int, int] | None = None) -> None:
        self.endpoint = endpoint
        self._all_endpoints = tuple(all_endpoints)
        self._client = client
        self._db = db
        self._config = config
        self._cache = cache
        self._births = births
        self._compiler = compiler
        self._metrics = metrics
        self._committed_upto = committed_upto
        self._on_progress = on_progress  # (frames deleted, bytes freed)
        self.retrying = False  # the endpoint is failing right now
        self.status = ForwarderStatus(cursor=cursor, live_lane=live_lane)
        self._new_data = asyncio.Event()
        # Rows read back from SQLite that the last request had no room for, in id order.
        self._read_ahead: deque[store.FrameRow] = deque()
        self._live_read_ahead: deque[store.FrameRow] = deque()
        self._draining = False
        self._stopping = False

    # ------------------------------------------------------------------ control
    def notify(self) -> None:
        self._new_data.set()

    def begin_drain(self) -> None:
        """Shutdown: send what is committed without waiting for batch deadlines, then return."""
        self._draining = True
        self._new_data.set()

    def stop_retrying(self) -> None:
        self._stopping = True

    @property
    def cursor(self) -> int:
        return self.status.cursor

    async def aclose(self) -> None:
        await self._client.aclose()

    # ------------------------------------------------------------------ main loop
    async def run(self) -> None:
        """Forward until drained (shutdown) or told to stop; SQLite trouble is waited out."""
        failures = 0
        while True:
            try:
                await self._forward()
                return
            except StoreError as exc:
                # The buffer is the source of truth: wait for it rather than die (a dead
                # forwarder would take the gateway down and back up into the same error).
                failures += 1
                self.status.last_error = str(exc)
                delay = min(self._config.retry_max_s, self._config.retry_min_s * 2**failures)
                log.error("%s: buffer error, retrying in %.1f s: %s", self.endpoint, delay, exc)
                await asyncio.sleep(delay)

    async def _forward(self) -> None:
        prepared: tuple[int, asyncio.Task[Batch]] | None = None  # (after, next backlog batch)
        try:
            flush_after: float | None = None
            loop = asyncio.get_running_loop()
            live_turn = True
            while True:
                upto = self._committed_upto()
                self._maybe_open_live_lane(upto)
                live = self.status.live_lane
                if live is not None and live_turn and live[1] < upto:
                    live_turn = False
                    frames, last_id, _ = await self._collect(live[1], upto,
                                                             self._live_read_ahead)
                    if not await self._deliver(frames):
                        return
                    await self._advance_live((live[0], last_id))
                    continue
                live_turn = True
                bound = live[0] if live is not None else upto
                if self.cursor >= bound:
                    if live is not None:  # the backlog has reached the live lane
                        await self._close_live_lane()
                        continue
                    if self._draining:
                        return
                    self._new_data.clear()
                    await self._new_data.wait()
                    continue
                if prepared is not None and prepared[0] == self.cursor:
                    frames, last_id, full = await prepared[1]
                else:
                    if prepared is not None:  # stale: the cursor jumped (a live lane closed)
                        await _discard(prepared[1])
                    frames, last_id, full = await self._collect(self.cursor, bound,
                                                                self._read_ahead)
                prepared = None
                if live is None and not full and not self._draining:
                    # A partial batch waits up to the flush deadline for more samples.
                    if flush_after is None:
                        flush_after = loop.time() + self._config.flush_deadline_s
                    remaining = flush_after - loop.time()
                    if remaining > 0:
                        self._new_data.clear()
                        try:
                            await asyncio.wait_for(self._new_data.wait(), remaining)
                        except TimeoutError:
                            pass
                        if loop.time() < flush_after:
                            continue
                flush_after = None
                if full:  # more is waiting: prepare the next batch while this one is sent
                    prepared = (last_id, asyncio.create_task(
                        self._collect(last_id, bound, self._read_ahead),
                        name=f"forward-prepare:{self.endpoint}"))
                if not await self._deliver(frames):
                    return  # stopping: the cursor stays, the frames stay in SQLite
                await self._advance(last_id)
        finally:
            if prepared is not None:  # owned here: never left running past the loop
                await _discard(prepared[1])

    def _maybe_open_live_lane(self, upto: int) -> None:
        if (self.status.live_lane is None and self._config.live_first and not self._draining
                and upto - self.cursor > LIVE_LANE_MIN_BACKLOG
                and self._cache.get(self.cursor + 1) is None):
            # Recorded with the first live request: until then nothing was sent out of order.
            self.status.live_lane = (upto, upto)
            log.info("%s: %d frames behind; live frames go first from frame %d",
                     self.endpoint, upto - self.cursor, upto)

    async def _collect(self, after: int, upto: int,
                       ahead: deque[store.FrameRow]) -> Batch:
        """Frames in (after, upto], up to max_samples_per_request: (frames, last id, full).
        `ahead` keeps the rows read back from SQLite that did not fit, for the next call."""
        limit = self._config.max_samples_per_request
        frames: list[Frame] = []
        samples = 0
        frame_id = after
        cache = self._cache
        # Fast path: the frames right after the cursor are still encoded in the cache.
        while frame_id < upto:
            entries = cache.get(frame_id + 1)
            if entries is None or (samples and samples + len(entries) > limit):
                break
            frame_id += 1
            frames.append((frame_id, entries))
            samples += len(entries)
        if frame_id == after:  # behind the cache (outage, restart, drops): read back
            while ahead and ahead[0].id <= after:
                ahead.popleft()
            if not ahead:
                rows = await self._db.read(
                    lambda conn: store.fetch_frames(conn, after, FETCH_FRAMES))
                if not rows:
                    return frames, upto, False  # everything up to upto was dropped or deleted
                ahead.extend(rows)
            while ahead:
                row = ahead[0]
                if row.id > upto:  # nothing left in (frame_id, upto]: deleted or dropped
                    frame_id = upto
                    break
                entries = self._entries_for(row)
                if samples and samples + len(entries) > limit:
                    break
                ahead.popleft()
                frame_id = row.id
                frames.append((row.id, entries))
                samples += len(entries)
        return frames, frame_id, frame_id < upto or samples >= limit

    def _entries_for(self, row: store.FrameRow) -> Sequence[bytes]:
        cached = self._cache.get(row.id)
        if cached is not None:
            return cached
        try:
            if row.kind == store.KIND_ENTRIES:
                return split_entries(row.payload)
            if row.kind == store.KIND_BIRTH:
                stored_birth = decode_birth(row.payload)
                return [self._compiler.encoder.info_entry(row.device_id, stored_birth,
                                                          row.received_ms)]
            raw = decode_telemetry_rows(row.payload)
            births = self._births
            known = births.get(row.device_id, raw.boot)
            ahead_ms = births.clock_ahead_ms(row.device_id, raw.boot)
            if ahead_ms:  # as the pipeline did when it stored the frame
                raw = shifted(raw, ahead_ms)
            return self._compiler.entries(row.device_id, raw, known)
        except (ProtocolError, LabelValidationError, ValueError) as exc:
            # Stored frames were valid when stored: this is a bug or a bad disk. Skip, loudly.
            log.error("%s: stored frame %d of %s no longer decodes (%s); skipped", self.endpoint,
                      row.id, row.device_id, exc)
            self._metrics.frames_dropped.labels("undecodable_stored").inc()
            return []

    # ------------------------------------------------------------------ sending
    async def _deliver(self, frames: list[Frame]) -> bool:
        """Deliver the frames' entries, isolating refused ones. False only when stopping."""
        count = sum(len(entries) for _, entries in frames)
        if not count:
            return True
        body = b"".join(chain.from_iterable(entries for _, entries in frames))
        result = await self._send(body, count)
        if result is None:
            return False
        if isinstance(result, Accepted):
            return True
        # Refused: split down to the samples the endpoint will not take.
        items = [(frame_id, entry) for frame_id, entries in frames for entry in entries]
        pending: list[list[Item]] = [items[: len(items) // 2], items[len(items) // 2 :]]
        dead: list[tuple[Item, Rejected]] = []
        if len(items) == 1:
            pending, dead = [], [(items[0], result)]
        while pending:
            part = pending.pop(0)
            if not part:
                continue
            result = await self._send(b"".join(entry for _, entry in part), len(part))
            if result is None:
                return False
            if isinstance(result, Rejected):
                if len(part) == 1:
                    dead.append((part[0], result))
                else:
                    middle = len(part) // 2
                    pending[:0] = [part[:middle], part[middle:]]
        if dead:
            await self._dead_letter(dead)
        return True

    async def _send(self, raw_body: bytes, samples: int) -> Accepted | Rejected | None:
        body = compress(raw_body)
        m = self._metrics
        endpoint = self.endpoint

        def wait(state: RetryCallState) -> float:
            outcome = state.outcome
            result = outcome.result() if outcome is not None else None
            backoff = wait_random_exponential(multiplier=self._config.retry_min_s,
                                              max=self._config.retry_max_s)(state)
            if isinstance(result, Retryable) and result.retry_after_s is not None:
                return max(backoff, min(result.retry_after_s, 600.0))
            return backoff

        def log_retry(state: RetryCallState) -> None:
            result = state.outcome.result() if state.outcome is not None else None
            reason = result.reason if isinstance(result, Retryable) else "?"
            self.status.last_error = reason
            if not self.retrying:
                self.retrying = True
                self._on_progress(0, 0)  # ingest must not wait on a forwarder that is stuck
            m.forward_retries.labels(endpoint).inc()
            self.status.retries += 1
            log.warning("%s: attempt %d failed (%s); retrying", endpoint, state.attempt_number,
                        reason)

        async for attempt in AsyncRetrying(
                retry=retry_if_result(lambda r: isinstance(r, Retryable) and not self._stopping),
                wait=wait, stop=stop_never, before_sleep=log_retry, reraise=True):
            with attempt:
                started = time.perf_counter()
                result = await self._client.send(body)
                m.forward_duration.labels(endpoint).observe(time.perf_counter() - started)
                m.forward_requests.labels(endpoint, type(result).__name__.lower()).inc()
            if not attempt.retry_state.outcome.failed:  # type: ignore[union-attr]
                attempt.retry_state.set_result(result)
        self.retrying = False
        if isinstance(result, Accepted):
            m.forward_samples.labels(endpoint).inc(samples)
            self.status.sent_samples += samples
            self.status.last_success_ms = int(time.time() * 1000)
            return result
        if isinstance(result, Rejected):
            return result
        return None  # still retryable but we are stopping

    async def replay(self, letters: Sequence[tuple[int, bytes]]
                     ) -> tuple[list[int], list[tuple[int, str, int]]]:
        """Send dead letters (id, entry) again, once, outside the cursor's order: returns the
        ids the endpoint took and (status, reason, id) of those it refused again. Raises
        ForwardUnavailable when it cannot be reached (nothing is changed then)."""
        if not letters:
            return [], []
        result = await self._client.send(compress(b"".join(e for _, e in letters)))
        if isinstance(result, Accepted):
            return [i for i, _ in letters], []
        if isinstance(result, Retryable):
            raise ForwardUnavailable(self.endpoint, result.reason)
        if len(letters) == 1:
            return [], [(result.status, result.reason, letters[0][0])]
        delivered: list[int] = []
        refused: list[tuple[int, str, int]] = []
        for letter in letters:  # dead letters are few: one request each finds the refused
            took, again = await self.replay([letter])
            delivered += took
            refused += again
        return delivered, refused

    async def _dead_letter(self, dead: list[tuple[Item, Rejected]]) -> None:
        now_ms = int(time.time() * 1000)
        rows = [(self.endpoint, frame_id, now_ms, rejected.status, rejected.reason[:1000],
                 _describe(entry), entry) for (frame_id, entry), rejected in dead]
        await self._db.write(lambda conn: store.add_dead_letters(conn, rows))
        self.status.dead_letters += len(rows)
        self.status.last_error = dead[-1][1].reason
        self._metrics.forward_dead_letters.labels(self.endpoint).inc(len(rows))
        log.error("%s: %d samples refused and dead-lettered, e.g. %s: %s", self.endpoint,
                  len(rows), rows[0][5], rows[0][4])

    async def _advance_live(self, live: tuple[int, int]) -> None:
        now_ms = int(time.time() * 1000)
        cursor = self.cursor
        await self._db.write(
            lambda conn: store.set_live_lane(conn, self.endpoint, cursor, live, now_ms))
        self.status.live_lane = live

    async def _close_live_lane(self) -> None:
        live = self.status.live_lane
        assert live is not None
        now_ms = int(time.time() * 1000)
        endpoints, endpoint, cursor = self._all_endpoints, self.endpoint, self.cursor

        def close(conn: sqlite3.Connection) -> tuple[int, int]:
            store.set_live_lane(conn, endpoint, cursor, None, now_ms)
            return store.advance_cursor(conn, endpoint, live[1], now_ms, endpoints)

        deleted, freed = await self._db.write(close)
        self.status.cursor = live[1]
        self.status.live_lane = None
        log.info("%s: backlog sent; the live lane closes at frame %d", endpoint, live[1])
        self._on_progress(deleted, freed)

    async def _advance(self, frame_id: int) -> None:
        now_ms = int(time.time() * 1000)
        endpoints = self._all_endpoints
        deleted, freed = await self._db.write(
            lambda conn: store.advance_cursor(conn, self.endpoint, frame_id, now_ms, endpoints))
        self.status.cursor = frame_id
        self._on_progress(deleted, freed)


async def _discard(task: asyncio.Task[Batch]) -> None:
    """Cancel a prepared batch and wait for it: it shares the read-ahead rows."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, StoreError):
        await task


def _describe(entry: bytes) -> str:
    try:
        decoded = decode_write_request(entry)
    except ValueError:
        return "<undecodable entry>"
    parts = []
    for labels, samples in decoded:
        name = labels.get("__name__", "")
        label_text = ",".join(f'{k}="{v}"' for k, v in labels.items() if k != "__name__")
        for value, ts in samples:
            shown = repr(value) if math.isfinite(value) else str(value)
            parts.append(f"{name}{{{label_text}}} {shown} @{ts}")
    return "; ".join(parts)
