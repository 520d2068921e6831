"""What one request of a forwarder carries: frames after a position, as request parts.

Frames right after the position come encoded from the entry cache. Behind it (an outage), a
block the cache sealed that starts right after the position is the whole request, as it was
compressed when its frames fell out of the cache. Else (past the cache's sealed bytes, after a
restart) frames are read back from SQLite, FETCH_FRAMES rows at a time, up to the next sealed
block, and decoded again. A frame larger than the room left is split
(gateway.forward.order.take).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence

from device_protocol import ProtocolError
from gateway.buffer import store
from gateway.buffer.buffer import Buffer
from gateway.buffer.entry_cache import Sealed
from gateway.buffer.store import Position
from gateway.forward.order import Part, take
from gateway.metrics import GatewayMetrics
from gateway.remote_write.wire import LabelValidationError

log = logging.getLogger(__name__)

FETCH_FRAMES = 2000  # rows per read-back from SQLite when behind the cache
# (parts, or a sealed block, position after them, full)
Batch = tuple[list[Part] | Sealed, Position, bool]


class Gatherer:
    """One endpoint's reading of the buffer (it remembers the last frame it decoded, so a
    frame split across requests is decoded once)."""

    def __init__(self, endpoint: str, buffer: Buffer, metrics: GatewayMetrics) -> None:
        self._endpoint = endpoint
        self._buffer = buffer
        self._metrics = metrics
        self._last: tuple[int, Sequence[bytes]] | None = None  # the last row read back

    async def gather(self, after: Position, upto: int, ahead: deque[store.FrameRow],
                     limit: int) -> Batch:
        """Parts of the frames after `after` up to frame `upto`, at most `limit` samples:
        (parts, position after them, full). From the cache while it has the next frame, else
        read back from SQLite into `ahead` (rows read but not yet taken, in id order)."""
        parts: list[Part] = []
        samples = 0
        frame_id, start = after.frame_id, after.offset
        cache, append = self._buffer.cache, parts.append
        if not start:
            block = cache.sealed_at(frame_id + 1)
            if block is not None and self._whole(block, upto, limit):
                loaded = await cache.load(block)
                if loaded is not None:
                    return loaded, Position(block.last_id), block.last_id < upto
        # Fast path: the frames right after the cursor are still encoded in the cache.
        while frame_id < upto and samples < limit:
            frame_id += 1
            entries = cache.get(frame_id)
            if entries is None:
                frame_id -= 1
                break
            if not start and samples + len(entries) <= limit:  # the whole frame fits
                append((frame_id, entries, entries))
                samples += len(entries)
                continue
            taken = take(parts, frame_id, entries, start, limit - samples, limit)
            samples += taken
            if start + taken < len(entries):  # no room, or a part of a frame over the cap
                return parts, Position(frame_id - 1, start + taken), True
            start = 0
        if frame_id == after.frame_id:  # behind the cache (outage, restart, drops): read back
            while ahead and ahead[0].id <= after.frame_id:
                ahead.popleft()
            # Up to the next sealed block: that one goes as it is.
            stop = min(cache.next_sealed_after(after.frame_id + 1) or upto + 1, upto + 1)
            if not ahead:
                count = max(1, min(FETCH_FRAMES, stop - after.frame_id - 1))
                rows = await self._buffer.db.read(
                    lambda conn: store.fetch_frames(conn, after.frame_id, count))
                if not rows:
                    return parts, Position(upto), False  # everything up to upto was deleted
                ahead.extend(rows)
            dropped = cache.windows.dropped
            while ahead and samples < limit:
                row = ahead[0]
                if row.id >= stop:  # nothing left in (frame_id, stop): deleted or dropped
                    frame_id = stop - 1
                    break
                if dropped and row.id in dropped:  # read ahead, then dropped (drop_oldest)
                    ahead.popleft()
                    frame_id = row.id
                    continue
                start = after.offset if row.id == after.frame_id + 1 else 0
                entries = self.entries_of(row)
                taken = take(parts, row.id, entries, start, limit - samples, limit)
                samples += taken
                if start + taken < len(entries):
                    return parts, Position(row.id - 1, start + taken), True
                ahead.popleft()
                frame_id = row.id
        return parts, Position(frame_id), frame_id < upto or samples >= limit

    def _whole(self, block: Sealed, upto: int, limit: int) -> bool:
        """The block can be sent as it is: committed, within the request size (a 413 may
        have lowered it), none of its frames dropped meanwhile."""
        if block.last_id > upto or block.samples > limit:
            return False
        dropped = self._buffer.cache.windows.dropped
        return not (dropped and any(block.first_id <= i <= block.last_id for i in dropped))

    def entries_of(self, row: store.FrameRow) -> Sequence[bytes]:
        cached = self._buffer.cache.get(row.id)
        if cached is not None:
            return cached
        if self._last is not None and self._last[0] == row.id:  # a frame split in parts
            return self._last[1]
        entries = self._decode(row)
        self._last = (row.id, entries)
        return entries

    def _decode(self, row: store.FrameRow) -> Sequence[bytes]:
        try:
            return self._buffer.decode(row)
        except (ProtocolError, LabelValidationError, ValueError) as exc:
            # Stored frames were valid when stored: this is a bug or a bad disk. Skip, loudly.
            log.error("%s: stored frame %d of %s no longer decodes (%s); skipped", self._endpoint,
                      row.id, row.device_id, exc)
            self._metrics.frames_dropped.labels("undecodable_stored").inc()
            return []
