"""What one request of a forwarder carries: frames after a position, as request parts.

Frames right after the position come encoded from the entry cache; behind it (an outage, a
restart, a slow endpoint) they are read back from SQLite, FETCH_FRAMES rows at a time, and
decoded again. A frame larger than the room left is split (gateway.forward.order.take).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence

from device_protocol import ProtocolError
from gateway.buffer import store
from gateway.buffer.buffer import Buffer
from gateway.buffer.store import Position
from gateway.forward.order import Part, take
from gateway.metrics import GatewayMetrics
from gateway.remote_write.wire import LabelValidationError

log = logging.getLogger(__name__)

FETCH_FRAMES = 2000  # rows per read-back from SQLite when behind the cache
Batch = tuple[list[Part], Position, bool]  # (parts, position after them, full)


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
            if not ahead:
                rows = await self._buffer.db.read(
                    lambda conn: store.fetch_frames(conn, after.frame_id, FETCH_FRAMES))
                if not rows:
                    return parts, Position(upto), False  # everything up to upto was deleted
                ahead.extend(rows)
            dropped = self._buffer.cache.windows.dropped
            while ahead and samples < limit:
                row = ahead[0]
                if row.id > upto:  # nothing left in (frame_id, upto]: deleted or dropped
                    frame_id = upto
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
