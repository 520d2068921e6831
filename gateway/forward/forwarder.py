"""One forwarder per remote-write endpoint: frames after its cursor -> requests -> cursor.

Order: a single request in flight per endpoint and frames taken in id (commit) order, so the
samples of every series reach the endpoint in the order the gateway stored them; within a
request every series' samples ascend by timestamp (gateway.forward.order). While a request is in
flight the next batch is prepared, so the gateway's CPU and the receiver's overlap during a
drain: from the entry cache, else a block the cache sealed when the frames fell out of it
(compressed once, sent as it is), else read back from SQLite and encoded again
(gateway.forward.gather).

Size: a request carries at most max_samples_per_request samples (lowered for the endpoint after
a 413). A larger frame is split across requests in its series order; the cursor is a position
(frame id, entries of the next frame sent), so a restart resumes after the last accepted part.

Outcomes of a request (the policy per answer class is gateway.forward.policy):
- accepted: the cursor moves past its frames (own transaction; frames every endpoint has passed
  whole are deleted there too);
- retryable (network, 5xx, 429, 408): retried forever with exponential backoff and bounded
  jitter, honouring Retry-After; the cursor stays, so nothing is lost whatever the outage;
- rejected (400, 422, other 4xx, permanent 5xx): the whole request is dead-lettered once with the
  endpoint's reason (one row per sample, for a later replay) and the cursor moves on; unless an
  empty request is refused too (refused wholesale: a configuration error, paused as below);
- too large (413): the endpoint's request size is halved and the same frames go again, smaller;
- misconfigured (401/403/404/...): the endpoint pauses with everything buffered, until a probe
  with an empty request is accepted.

The one at-least-once window: a kill between a 2xx and the cursor commit resends that request.

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
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TypeVar

from gateway.backoff import backoff_s
from gateway.buffer import store
from gateway.buffer.buffer import Buffer
from gateway.buffer.entry_cache import Sealed
from gateway.buffer.store import Position
from gateway.errors import StoreError
from gateway.forward.client import Accepted, Rejected, RemoteWriteClient, TooLarge
from gateway.forward.gather import FETCH_FRAMES, Batch, Gatherer
from gateway.forward.order import Part, Request, seal
from gateway.forward.policy import EndpointSender, ForwarderStatus, dead_letter, replay
from gateway.metrics import GatewayMetrics
from gateway.settings import ForwardConfig

__all__ = ["FETCH_FRAMES", "LIVE_LANE_MIN_BACKLOG", "Forwarder", "ForwarderStatus", "Resume"]

_T = TypeVar("_T")
log = logging.getLogger(__name__)

LIVE_LANE_MIN_BACKLOG = 5000  # frames behind, read back from SQLite, before live goes first
BACKLOG, LIVE = "backlog", "live"  # the lanes a forwarder holds frames in (SendWindows)


class Delivery(Enum):
    DONE = "done"  # accepted or dead-lettered: move past the frames
    SHRUNK = "shrunk"  # 413: collect the same frames again, in smaller requests
    STOPPED = "stopped"  # told to stop while the endpoint fails: the cursor stays


@dataclass(frozen=True, slots=True)
class Resume:
    """Where an endpoint's forwarding stands, as stored (table cursors)."""

    cursor: int = 0
    cursor_offset: int = 0  # entries of frame cursor + 1 already sent (a split frame)
    live_lane: tuple[int, int] | None = None  # (live_from, live_upto)
    live_offset: int = 0  # entries of frame live_upto + 1 already sent

    @classmethod
    def of(cls, state: store.StoredState, endpoint: str) -> Resume:
        return cls(state.cursors.get(endpoint, 0), state.cursor_offsets.get(endpoint, 0),
                   state.live_lanes.get(endpoint), state.live_offsets.get(endpoint, 0))


class Forwarder:
    def __init__(self, *, endpoint: str, client: RemoteWriteClient, buffer: Buffer,
                 config: ForwardConfig, metrics: GatewayMetrics,
                 resume: Resume = Resume()) -> None:
        self.endpoint = endpoint
        self._client = client
        self._buffer = buffer
        self._db = buffer.db
        self._config = config
        self._cache = buffer.cache
        self._windows = buffer.cache.windows
        self._windows.register(endpoint)
        # Frames that fall out of the cache while behind are kept as requests of this size,
        # in files beside the database.
        db_path = getattr(buffer.db, "path", None)
        buffer.cache.seal_blocks(config.max_samples_per_request, seal,
                                 db_path.parent / "sealed" if isinstance(db_path, Path) else None)
        self._metrics = metrics
        live_lane = resume.live_lane
        self.status = ForwarderStatus(cursor=resume.cursor, cursor_offset=resume.cursor_offset,
                                      live_lane=live_lane,
                                      max_samples_per_request=config.max_samples_per_request)
        self._live_offset = resume.live_offset if live_lane is not None else 0
        self._sender = EndpointSender(endpoint, client, config, metrics, self.status,
                                      on_stuck=buffer.wake_ingest)
        buffer.attach(self)
        metrics.forward_paused.labels(endpoint).set(0)
        metrics.forward_request_samples_max.labels(endpoint).set(config.max_samples_per_request)
        self._new_data = asyncio.Event()
        # Rows read back from SQLite that the last request had no room for, in id order.
        self._read_ahead: deque[store.FrameRow] = deque()
        self._live_read_ahead: deque[store.FrameRow] = deque()
        self._gatherer = Gatherer(endpoint, buffer, metrics)
        self._draining = False
        self._keep_partial(BACKLOG, self.position)
        if live_lane is not None:
            self._keep_partial(LIVE, Position(live_lane[1], self._live_offset))

    # ------------------------------------------------------------------ control
    def notify(self) -> None:
        self._new_data.set()

    def begin_drain(self) -> None:
        """Shutdown: send what is committed without waiting for batch deadlines, then return."""
        self._draining = True
        self._new_data.set()

    def stop_retrying(self) -> None:
        self._sender.stopping = True

    @property
    def retrying(self) -> bool:
        """The endpoint is failing right now (retrying, or paused)."""
        return self._sender.retrying

    @property
    def cursor(self) -> int:
        return self.status.cursor

    @property
    def position(self) -> Position:
        return Position(self.status.cursor, self.status.cursor_offset)

    async def aclose(self) -> None:
        self._windows.release(self.endpoint)
        self._cache.unseal()
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
                delay = backoff_s(failures, self._config.retry_min_s, self._config.retry_max_s)
                log.error("%s: buffer error, retrying in %.2f s: %s", self.endpoint, delay, exc)
                await asyncio.sleep(delay)

    async def _forward(self) -> None:
        prepared: tuple[Position, asyncio.Task[Batch]] | None = None  # the next backlog batch
        try:
            flush_after: float | None = None
            live_turn = True
            while True:
                upto = self._buffer.committed_upto
                self._maybe_open_live_lane(upto)
                live = self.status.live_lane
                if live is not None and live_turn and live[1] < upto:
                    live_turn = False
                    if not await self._send_live(live, upto):
                        return
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
                if prepared is not None and prepared[0] == self.position:
                    parts, end, full = await prepared[1]
                else:
                    if prepared is not None:  # stale: the cursor jumped (a live lane closed)
                        await _discard(prepared[1])
                    parts, end, full = await self._collect(self.position, bound, BACKLOG)
                prepared = None
                if live is None and not full and not self._draining:
                    # A partial batch waits up to the flush deadline for more samples.
                    if flush_after is None:
                        flush_after = asyncio.get_running_loop().time() + (
                            self._config.flush_deadline_s)
                    if await self._wait_for_more(flush_after):
                        continue
                flush_after = None
                if full:  # more is waiting: prepare the next batch while this one is sent
                    prepared = (end, asyncio.create_task(
                        self._collect(end, bound, BACKLOG),
                        name=f"forward-prepare:{self.endpoint}"))
                outcome = await self._deliver(parts)
                if outcome is Delivery.STOPPED:
                    return  # the cursor stays, the frames stay in SQLite
                if outcome is Delivery.SHRUNK:
                    if prepared is not None:
                        await _discard(prepared[1])
                        prepared = None
                    self._read_ahead.clear()  # the refused rows are read again
                    continue
                await self._advance(end)
        finally:
            if prepared is not None:  # owned here: never left running past the loop
                await _discard(prepared[1])

    async def _wait_for_more(self, flush_after: float) -> bool:
        """Wait for new data until the flush deadline: True if the batch should be collected
        again (new data came first), False if the deadline has passed."""
        loop = asyncio.get_running_loop()
        remaining = flush_after - loop.time()
        if remaining <= 0:
            return False
        self._new_data.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._new_data.wait(), remaining)
        return loop.time() < flush_after

    def _maybe_open_live_lane(self, upto: int) -> None:
        if (self.status.live_lane is None and self._config.live_first and not self._draining
                and upto - self.cursor > LIVE_LANE_MIN_BACKLOG
                and self._cache.get(self.cursor + 1) is None):
            # Recorded with the first live request: until then nothing was sent out of order.
            self.status.live_lane = (upto, upto)
            self._live_offset = 0
            log.info("%s: %d frames behind; live frames go first from frame %d",
                     self.endpoint, upto - self.cursor, upto)

    async def _send_live(self, live: tuple[int, int], upto: int) -> bool:
        """One live request; False only when stopping."""
        parts, end, _ = await self._collect(Position(live[1], self._live_offset), upto, LIVE)
        outcome = await self._deliver(parts)
        if outcome is Delivery.STOPPED:
            return False
        if outcome is Delivery.SHRUNK:
            self._live_read_ahead.clear()
        else:
            await self._advance_live(live[0], end)
        return True

    # ------------------------------------------------------------------ collecting
    async def _collect(self, after: Position, upto: int, lane: str) -> Batch:
        """Parts of the frames after `after` up to frame `upto`, at most the endpoint's request
        size: (parts, position after them, full). What it takes and reads ahead is noted in
        the send windows: frames drop_oldest deletes among them are then left out."""
        ahead = self._read_ahead if lane == BACKLOG else self._live_read_ahead
        low = self.cursor if lane == BACKLOG else (self.status.live_lane or (0, 0))[1]
        self._windows.hold(self.endpoint, lane, low, 1 << 62)  # whatever a read-back returns
        batch = await self._gatherer.gather(after, upto, ahead,
                                            self.status.max_samples_per_request)
        end = batch[1]
        high = max(end.frame_id + (1 if end.offset else 0), ahead[-1].id if ahead else 0)
        self._windows.hold(self.endpoint, lane, low, high)
        return batch

    # ------------------------------------------------------------------ sending
    async def _deliver(self, parts: list[Part] | Sealed) -> Delivery:
        """Send the parts (or a sealed block) as one request; dead-letter it whole if refused
        for good."""
        if isinstance(parts, Sealed):
            request = Request(self.endpoint, [], self._windows, parts)
        elif not any(entries for _, entries, _ in parts):
            return Delivery.DONE
        else:
            request = Request(self.endpoint, parts, self._windows)
        result = await self._sender.send(request)
        if result is None:
            return Delivery.STOPPED
        if isinstance(result, Accepted):
            return Delivery.DONE
        count = request.samples
        if isinstance(result, TooLarge) and count > 1:
            self._shrink(count, result)
            return Delivery.SHRUNK
        await self._dead_letter(request.parts, result)  # refused, or one sample too large
        return Delivery.DONE

    def _shrink(self, count: int, result: TooLarge) -> None:
        size = max(1, min(count, self.status.max_samples_per_request) // 2)
        self.status.max_samples_per_request = size
        self.status.last_error = result.reason
        self._metrics.forward_request_samples_max.labels(self.endpoint).set(size)
        log.warning("%s: a request of %d samples was too large (%s); requests carry at most %d "
                    "samples from now on (lower remote_write_max_samples to keep it so)",
                    self.endpoint, count, result.reason, size)

    async def replay(self, letters: Sequence[tuple[int, bytes]]
                     ) -> tuple[list[int], list[tuple[int, str, int]]]:
        """Send dead letters again (POST /api/v1/dead-letters/replay): see forward_policy."""
        return await replay(self._client, self.endpoint, letters)

    async def _dead_letter(self, parts: list[Part], refused: Rejected | TooLarge) -> None:
        # Written like a position: a failing disk must not make the refused request go again.
        await dead_letter(self._write_position, self.endpoint, parts, refused, self.status,
                          self._metrics)

    # ------------------------------------------------------------------ positions
    async def _advance_live(self, live_from: int, end: Position) -> None:
        now_ms = int(time.time() * 1000)
        cursor, live = self.cursor, (live_from, end.frame_id)
        await self._write_position(lambda conn: store.set_live_lane(
            conn, self.endpoint, cursor, live, now_ms, end.offset))
        self.status.live_lane = live
        self._live_offset = end.offset
        self._keep_partial(LIVE, end)

    async def _close_live_lane(self) -> None:
        live = self.status.live_lane
        assert live is not None
        now_ms = int(time.time() * 1000)
        endpoints, endpoint, cursor = self._buffer.endpoints, self.endpoint, self.cursor
        jump = Position(live[1], self._live_offset)

        def close(conn: sqlite3.Connection) -> tuple[int, int]:
            store.set_live_lane(conn, endpoint, cursor, None, now_ms)
            return store.advance_cursor(conn, endpoint, jump.frame_id, now_ms, endpoints,
                                        jump.offset)

        deleted, freed = await self._write_position(close)
        self.status.cursor, self.status.cursor_offset = jump.frame_id, jump.offset
        self.status.live_lane = None
        self._live_offset = 0
        self._keep_partial(LIVE, Position(0))
        self._keep_partial(BACKLOG, jump)
        log.info("%s: backlog sent; the live lane closes at frame %d", endpoint, live[1])
        self._buffer.freed(deleted, freed)

    async def _write_position(self, write: Callable[[sqlite3.Connection], _T]) -> _T:
        """Record a position the receiver has acknowledged. Its samples are at the receiver
        already, so a failing write (a full disk) is retried here, never the send: unwinding
        to run() would read the same frames again and send them again, once per retry."""
        failures = 0
        while True:
            try:
                return await self._db.write(write)
            except StoreError as exc:
                if self._sender.stopping:  # shutdown: the request of the at-least-once window
                    raise
                failures += 1
                self.status.last_error = str(exc)
                delay = backoff_s(failures, self._config.retry_min_s, self._config.retry_max_s)
                log.error("%s: sent, but its position could not be recorded (%s); retrying "
                          "the write in %.2f s (nothing is resent)", self.endpoint, exc, delay)
                await asyncio.sleep(delay)

    async def _advance(self, end: Position) -> None:
        now_ms = int(time.time() * 1000)
        endpoints = self._buffer.endpoints
        deleted, freed = await self._write_position(lambda conn: store.advance_cursor(
            conn, self.endpoint, end.frame_id, now_ms, endpoints, end.offset))
        self.status.cursor, self.status.cursor_offset = end.frame_id, end.offset
        self._keep_partial(BACKLOG, end)
        self._buffer.freed(deleted, freed)

    def _keep_partial(self, lane: str, position: Position) -> None:
        """A frame this endpoint has been sent part of is not eligible for drop_oldest."""
        after = position.frame_id if position.offset else 0
        self._windows.keep(self.endpoint, f"partial:{lane}", after, after + 1 if after else 0)


async def _discard(task: asyncio.Task[Batch]) -> None:
    """Cancel a prepared batch and wait for it: it shares the read-ahead rows."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, StoreError):
        await task
