"""The buffer: one object shared by the pipeline (writer) and the forwarders (readers).

It owns what both sides need to agree on, so neither reaches into the other:
- frame ids, handed out in commit order under `commit_lock` (the pipeline plans, commits and
  applies one group at a time while holding it, and so do the gateway's own frames);
- the committed position (`committed_upto`): readers send nothing past it;
- the frames and bytes it holds (the gauges, `buffer_max_bytes`, and what a full buffer does:
  wait for the forwarders under `block`, drop the oldest unsent frames under `drop_oldest`);
- the two signals: new data (readers are notified after a commit) and progress (a reader freed
  space or is failing: a waiting ingest looks again);
- the entry cache (frames' remote-write entries, encoded once at ingest) and, for frames no
  longer in it, the decoder that reads a stored frame back into entries.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Literal, Protocol

from gateway.buffer import store
from gateway.buffer.db import Database
from gateway.buffer.entry_cache import EntryCache, serves_next_frame_of
from gateway.errors import StoreError
from gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)

# The entries of a frame read back from SQLite (the pipeline's compiler, given at wiring).
FrameDecoder = Callable[[store.FrameRow], Sequence[bytes]]
FullPolicy = Literal["block", "drop_oldest"]


class Reader(Protocol):
    """What the buffer needs of a forwarder."""

    @property
    def cursor(self) -> int: ...
    @property
    def retrying(self) -> bool: ...
    def notify(self) -> None: ...


def _undecodable(row: store.FrameRow) -> Sequence[bytes]:
    raise ValueError(f"no decoder for stored frame {row.id}")


class Buffer:
    def __init__(self, db: Database, metrics: GatewayMetrics, *, next_frame_id: int,
                 frames: int, size: int, endpoints: Sequence[str] = (),
                 max_bytes: int = 1 << 62, full_policy: FullPolicy = "block",
                 cache: EntryCache | None = None, decode: FrameDecoder = _undecodable) -> None:
        self.db = db
        self.cache = cache if cache is not None else EntryCache()
        self.endpoints = tuple(endpoints)
        self.max_bytes = max_bytes
        self.full_policy = full_policy
        self.decode = decode
        self._metrics = metrics
        self._next_frame_id = next_frame_id
        self.committed_upto = next_frame_id - 1
        self.frames = frames
        self.bytes = size
        # One plan-commit-apply at a time: frame ids are handed out in commit order.
        self.commit_lock = asyncio.Lock()
        self._progress = asyncio.Event()
        self._readers: list[Reader] = []
        self._set_gauges()

    # ------------------------------------------------------------------ the writer's side
    def reserve_id(self) -> int:
        """The next frame id (call with commit_lock held)."""
        frame_id = self._next_frame_id
        self._next_frame_id += 1
        return frame_id

    @property
    def last_reserved(self) -> int:
        return self._next_frame_id - 1

    def committed(self, entries: Sequence[tuple[int, Sequence[bytes]]], frames: int, size: int,
                  upto: int) -> None:
        """A commit returned: cache its entries, count it, and wake the readers."""
        put = self.cache.put
        for frame_id, frame_entries in entries:
            put(frame_id, frame_entries)
        self.frames += frames
        self.bytes += size
        self._set_gauges()
        if upto > self.committed_upto:
            self.committed_upto = upto
            for reader in self._readers:
                reader.notify()

    async def pace(self) -> None:
        """Hold ingest while healthy readers are about to fall out of the entry cache.

        Frames that fall out must later be read back from SQLite and decoded again: with every
        endpoint up, taking them faster than they can be forwarded only doubles the work. An
        endpoint that is failing does not hold ingest: the buffer is there for that.
        """
        cache = self.cache
        limit = cache.max_samples * 3 // 4
        while cache.samples > limit and self.keeping_up():
            self._progress.clear()
            await self._progress.wait()

    def keeping_up(self) -> bool:
        """Every reader is healthy and takes its next frame from the cache: only then is it
        worth holding ingest so they stay there. One draining a backlog from SQLite is past
        that; holding ingest would only make live data wait behind the backlog at the broker."""
        readers = self._readers
        return (bool(readers) and not any(r.retrying for r in readers)
                and serves_next_frame_of(self.cache, (r.cursor for r in readers)))

    async def make_room(self, added_bytes: int, unfreeable_bytes: Callable[[], int]) -> None:
        """Before a commit of added_bytes: under drop_oldest drop the oldest unsent frames;
        under block wait for the readers to free space. unfreeable_bytes() is what only the
        writer can free (frames held for a birth), so a wait never outlasts the readers."""
        over = self.bytes + added_bytes - self.max_bytes
        if over <= 0:
            return
        if self.full_policy == "drop_oldest":
            await self._drop_oldest(over)
            return
        self._metrics.buffer_full_waits.inc()
        log.warning("buffer full (%d bytes): ingest waits for the forwarders", self.bytes)
        # A buffer the forwarders cannot free takes any batch: one batch larger than the cap,
        # or frames held for a birth (only a birth frees them, and it must get in), must not
        # stop ingest for good.
        while self.bytes > unfreeable_bytes() and self.bytes + added_bytes > self.max_bytes:
            self._progress.clear()
            await self._progress.wait()

    async def _drop_oldest(self, over: int) -> None:
        # Frames on the wire are not eligible (the next-oldest go instead), and forwarders
        # leave dropped frames out of their next attempts: a frame counted as dropped is
        # one an endpoint is never sent (docs/operations.md).
        windows = self.cache.windows
        try:
            async with windows.lock:  # no forwarder takes frames while victims are picked
                keep, endpoints = windows.ranges(), tuple(windows.endpoints)
                dropped = await self.db.write(
                    lambda conn: store.drop_unsent(conn, over, keep, endpoints))
                self.cache.discard(dropped.ids)
                windows.note_dropped(dropped.ids)
        except StoreError as exc:  # the commit that follows retries; so will the next drop
            log.error("buffer full, and dropping the oldest frames failed: %s", exc)
            return
        if dropped.ids:
            log.warning("buffer full: dropped the %d oldest unsent frames (%d bytes)",
                        len(dropped.ids), dropped.bytes)
            self._metrics.frames_dropped.labels("buffer_full").inc(dropped.dropped)
            for endpoint, missed in dropped.missed.items():
                self._metrics.forward_frames_dropped.labels(endpoint).inc(missed)
            self.freed(len(dropped.ids), dropped.bytes)

    # ------------------------------------------------------------------ the readers' side
    def attach(self, reader: Reader) -> None:
        self._readers.append(reader)

    def freed(self, frames: int, size: int) -> None:
        """Frames were deleted (sent everywhere, dropped, or held frames pruned): account for
        the space, let the cache go of what every reader has passed, and wake a waiting ingest."""
        self.frames -= frames
        self.bytes -= size
        self._set_gauges()
        if self._readers:
            self.cache.evict_upto(min(r.cursor for r in self._readers))
        self._progress.set()

    def wake_ingest(self) -> None:
        """A reader changed health (started failing): a pacing ingest looks again."""
        self._progress.set()

    def entries_of(self, row: store.FrameRow) -> Sequence[bytes]:
        """A stored frame's entries: from the cache, else read back by the decoder (which may
        raise for a frame that no longer decodes)."""
        cached = self.cache.get(row.id)
        return cached if cached is not None else self.decode(row)

    def _set_gauges(self) -> None:
        self._metrics.buffer_bytes.set(self.bytes)
        self._metrics.buffer_frames.set(self.frames)
