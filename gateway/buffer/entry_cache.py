"""Encoded remote-write entries of recently committed frames, shared by every forwarder.

The live path encodes each frame once, right after its commit; forwarders that keep up take the
bytes from here and never touch SQLite or the decoder.

Frames that fall out of the cache while a forwarder is behind (an outage) are kept encoded: in
id order, a request's worth at a time (`block_samples`), as the compressed body of that request
(`Sealed`), up to `max_sealed_bytes` in all: on disk beside the database (`Spill`, segment files
deleted once passed) when the forwarders give a directory, else in memory. A forwarder whose
position is a block's start sends that body as it is: no read-back, no decode, no join, no
compression ("keep what is encoded once encoded"; vmagent drains its queue of compressed blocks
the same way). Past that bound, after a restart (the files of an earlier run are deleted: the
frames are in SQLite), or if the disk fails, a forwarder reads the frames back from SQLite and
decodes them again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.remote_write.wire import decompress, split_entries

# ~150 bytes an entry: 400k samples is ~60 MiB, i.e. 20 s at 20k samples/s of headroom.
DEFAULT_MAX_SAMPLES = 400_000
# Compressed, a 20-sample frame's entries take ~10 bytes a sample (bench: 207 kB a request of
# 20,000): 64 MiB keep ~6.5 million samples, a 30 s outage of 100,000 devices at a 10 s cadence
# or 5 min of 20,000 samples/s. Memory only while a forwarder is behind.
DEFAULT_MAX_SEALED_BYTES = 64 << 20
# On disk: 1 GiB keep ~100 million samples (8 min of that fleet), about what the SQLite buffer
# holds of the same frames (msgpack rows take ~12 bytes a sample).
DEFAULT_MAX_SPILLED_BYTES = 1 << 30
SEGMENT_BYTES = 16 << 20  # a spill file's size before the next one starts
# The SQLite buffer comes first on the volume: no new spill file unless this much stays free
# (at least, or a tenth of the volume if more).
SPILL_RESERVE_BYTES = 256 << 20
log = logging.getLogger(__name__)
# The body of a request made of frames' entries, in id order, or None when it cannot be their
# plain concatenation (a device's frames go back in time: that request is sorted when sent).
Sealer = Callable[[Sequence[tuple[int, Sequence[bytes]]]], bytes | None]


@dataclass(frozen=True, slots=True)
class Sealed:
    """Frames first_id..last_id (every id between, each in the block) as one compressed
    request body: the plain concatenation of their entries, in id order."""

    first_id: int
    last_id: int
    counts: array[int]  # entries per frame, in id order
    samples: int
    body: bytes  # b"" while on disk (EntryCache.load reads it)
    spilled: tuple[int, int, int] | None = None  # (segment, offset, length) on disk

    def frames(self) -> list[tuple[int, list[bytes]]]:
        """The frames' entries again (rare: a frame dropped from it, a refused request)."""
        entries = split_entries(decompress(self.body))
        out, start = [], 0
        for i, count in enumerate(self.counts):
            out.append((self.first_id + i, entries[start:start + count]))
            start += count
        return out


class Spill:
    """Sealed bodies on disk: appended to segment files in `directory`; a segment is deleted
    when the forwarders have passed every block in it. `bytes` counts the files' sizes, blocks
    dropped meanwhile included, so that it bounds the disk used."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob("*.sealed"):  # an earlier run's: its frames are in SQLite
            old.unlink()
        self.directory = directory
        self._segments: OrderedDict[int, list[int]] = OrderedDict()  # n -> [fd, size, last id]
        self._next = 0
        self.bytes = 0

    def append(self, body: bytes, last_id: int) -> tuple[int, int, int]:
        """Write a body; where it is. Raises OSError (a full disk)."""
        current = next(reversed(self._segments), None)
        if current is None or self._segments[current][1] >= SEGMENT_BYTES:
            volume = os.statvfs(self.directory)
            free = volume.f_bavail * volume.f_frsize
            if free < SEGMENT_BYTES + max(SPILL_RESERVE_BYTES,
                                          volume.f_blocks * volume.f_frsize // 10):
                raise OSError(f"{free} bytes free: left to the database")
            current, self._next = self._next, self._next + 1
            fd = os.open(self.directory / f"{current:08d}.sealed",
                         os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            self._segments[current] = [fd, 0, 0]
        segment = self._segments[current]
        offset = segment[1]
        written = os.pwrite(segment[0], body, offset)
        if written != len(body):
            raise OSError(f"short write to a spill file ({written} of {len(body)} bytes)")
        segment[1] += written
        segment[2] = last_id
        self.bytes += written
        return current, offset, written

    def read(self, where: tuple[int, int, int]) -> bytes:
        number, offset, length = where
        segment = self._segments.get(number)
        if segment is None:
            raise OSError(f"spill segment {number} is gone")
        body = os.pread(segment[0], length, offset)
        if len(body) != length:
            raise OSError(f"short read from spill segment {number}")
        return body

    def release_upto(self, frame_id: int) -> None:
        """Delete the segments whose blocks are all at or before frame_id."""
        while self._segments:
            number, (fd, size, last_id) = next(iter(self._segments.items()))
            if last_id > frame_id:
                break
            del self._segments[number]
            self.bytes -= size
            os.close(fd)
            (self.directory / f"{number:08d}.sealed").unlink(missing_ok=True)

    def close(self) -> None:
        self.release_upto(1 << 62)


class FrameEntries(list[bytes]):
    """A device frame's entries with the device and the frame's oldest and newest sample time,
    set by the frame compiler: a forwarder checks per frame, not per sample, that a request
    keeps every series in time order (it sorts only when one device's frames go backwards)."""

    __slots__ = ("device", "first_ms", "last_ms")

    device: str
    first_ms: int
    last_ms: int


class SendWindows:
    """What the forwarders hold of the buffer, shared with the drop_oldest policy, so that a
    frame the policy counts as dropped is one that no endpoint is sent (issue 11, finding 6):

    - on the wire: the frames of a request attempt whose answer has not come, and a frame an
      endpoint has been sent part of. Not eligible for dropping (the next-oldest go instead);
    - held: what a forwarder has collected or read ahead in memory. Eligible; the ids dropped
      among them are noted in `dropped`, and a forwarder leaves those out of its next attempt.

    The policy picks its victims, and a forwarder marks an attempt on the wire, under `lock`.
    """

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.endpoints: list[str] = []  # every endpoint a forwarder sends to
        self.dropped: set[int] = set()  # dropped frames some forwarder may still hold
        self._held: dict[tuple[str, str], tuple[int, int]] = {}
        self._kept: dict[tuple[str, str], tuple[int, int]] = {}

    def register(self, endpoint: str) -> None:
        if endpoint not in self.endpoints:
            self.endpoints.append(endpoint)

    def hold(self, endpoint: str, lane: str, after: int, upto: int) -> None:
        """endpoint's lane has frames (after, upto] in memory (replacing what it had)."""
        self._held[(endpoint, lane)] = (after, upto)
        if self.dropped:  # forget the dropped frames nobody holds any more
            low = min(a for a, _ in self._held.values())
            self.dropped = {i for i in self.dropped if i > low}

    def keep(self, endpoint: str, what: str, after: int, upto: int) -> None:
        """Frames (after, upto] are on the wire or partly sent: not eligible for dropping."""
        if upto > after:
            self._kept[(endpoint, what)] = (after, upto)
        else:
            self._kept.pop((endpoint, what), None)

    def release(self, endpoint: str) -> None:
        for table in (self._held, self._kept):
            for key in [k for k in table if k[0] == endpoint]:
                del table[key]

    def ranges(self) -> list[tuple[int, int]]:
        """The ranges (after, upto] not eligible for dropping."""
        return list(self._kept.values())

    def note_dropped(self, frame_ids: Iterable[int]) -> None:
        held = list(self._held.values())
        self.dropped.update(i for i in frame_ids if any(a < i <= b for a, b in held))


class EntryCache:
    def __init__(self, max_samples: int = DEFAULT_MAX_SAMPLES,
                 max_sealed_bytes: int = DEFAULT_MAX_SEALED_BYTES) -> None:
        self.windows = SendWindows()  # shared by the forwarders and the drop_oldest policy
        # Insertion order == frame id order. OrderedDict, not dict: dropping from the front of a
        # plain dict leaves holes that make every later next(iter()) scan them (measured 4%).
        self._frames: OrderedDict[int, Sequence[bytes]] = OrderedDict()
        self._samples = 0
        self.max_samples = max_samples
        self.max_sealed_bytes = max_sealed_bytes
        self.block_samples = 0  # 0: frames that fall out are forgotten (no forwarder yet)
        self._sealer: Sealer | None = None
        # Fallen out, not sealed yet (less than a block): still served by get().
        self._pending: OrderedDict[int, Sequence[bytes]] = OrderedDict()
        self._pending_samples = 0
        self._sealed: OrderedDict[int, Sealed] = OrderedDict()  # first_id -> block, id order
        self._sealed_bytes = 0
        self._spill: Spill | None = None
        self._spill_failing = False
        self._sealing = 0  # forwarders that asked for blocks and have not closed

    def seal_blocks(self, block_samples: int, sealer: Sealer,
                    spill_dir: Path | None = None) -> None:
        """Keep frames that fall out as compressed blocks of at most block_samples samples
        (a forwarder's request size; the smallest of them when there are several), in files
        under spill_dir if given (up to DEFAULT_MAX_SPILLED_BYTES unless max_sealed_bytes was
        set), else in memory."""
        self.block_samples = min(self.block_samples or block_samples, block_samples)
        self._sealer = sealer
        self._sealing += 1
        if spill_dir is not None and self._spill is None and not self._sealed:
            try:
                self._spill = Spill(spill_dir)
            except OSError as exc:
                log.warning("frames that fall out of the entry cache stay in memory: %s", exc)
                return
            if self.max_sealed_bytes == DEFAULT_MAX_SEALED_BYTES:
                self.max_sealed_bytes = DEFAULT_MAX_SPILLED_BYTES

    def unseal(self) -> None:
        """A forwarder closed; with the last one the spill files go."""
        self._sealing -= 1
        if self._sealing <= 0 and self._spill is not None:
            self._sealed.clear()
            self._sealed_bytes = 0
            self._spill.close()

    async def load(self, block: Sealed) -> Sealed | None:
        """The block with its body, read from disk if spilled; None (and the block forgotten:
        its frames are read back from SQLite) if that read fails."""
        if block.spilled is None or self._spill is None:
            return block if block.spilled is None else None
        try:
            body = await asyncio.to_thread(self._spill.read, block.spilled)
        except OSError as exc:
            log.warning("a spilled block of frames %d-%d could not be read (%s): read back "
                        "from SQLite instead", block.first_id, block.last_id, exc)
            self._forget(block)
            return None
        return dataclasses.replace(block, body=body, spilled=None)

    def put(self, frame_id: int, entries: Sequence[bytes]) -> None:
        self._frames[frame_id] = entries
        self._samples += len(entries)
        frames = self._frames
        while self._samples > self.max_samples and frames:
            old_id, old = frames.popitem(last=False)
            self._samples -= len(old)
            if self.block_samples:
                self._fall_out(old_id, old)

    def get(self, frame_id: int) -> Sequence[bytes] | None:
        entries = self._frames.get(frame_id)
        if entries is None and self._pending:
            return self._pending.get(frame_id)
        return entries

    def sealed_at(self, frame_id: int) -> Sealed | None:
        """The block that starts at frame_id, if any."""
        return self._sealed.get(frame_id)

    def next_sealed_after(self, frame_id: int) -> int | None:
        """The first frame of the first block starting after frame_id."""
        return next((first for first in self._sealed if first > frame_id), None)

    @property
    def sealed_bytes(self) -> int:
        return self._sealed_bytes

    def _fall_out(self, frame_id: int, entries: Sequence[bytes]) -> None:
        pending = self._pending
        if pending and (frame_id != next(reversed(pending)) + 1
                        or self._pending_samples + len(entries) > self.block_samples):
            self._seal()  # a block holds consecutive frames, at most a request's samples
        if len(entries) > self.block_samples:
            return  # larger than a request: read back from SQLite and split when sent
        pending[frame_id] = entries
        self._pending_samples += len(entries)
        if self._pending_samples >= self.block_samples:
            self._seal()

    def _seal(self) -> None:
        frames = list(self._pending.items())
        self._pending.clear()
        samples, self._pending_samples = self._pending_samples, 0
        if (self._sealed_bytes >= self.max_sealed_bytes or self._sealer is None
                or frames[-1][0] - frames[0][0] + 1 != len(frames)):  # full, or a hole
            return  # these are read back from SQLite when their turn comes
        body = self._sealer(frames)
        if body is None or self._sealed_bytes + len(body) > self.max_sealed_bytes:
            return
        block = Sealed(frames[0][0], frames[-1][0], array("I", [len(e) for _, e in frames]),
                       samples, body)
        if self._spill is not None:
            try:
                where = self._spill.append(body, block.last_id)
            except OSError as exc:  # a full disk: these are read back from SQLite
                if not self._spill_failing:  # once per spell, not per block
                    log.warning("frames that fall out of the entry cache are not spilled from "
                                "frame %d on (%s): they are read back from SQLite",
                                block.first_id, exc)
                self._spill_failing = True
                return
            self._spill_failing = False
            block = dataclasses.replace(block, body=b"", spilled=where)
        self._sealed[block.first_id] = block
        self._sealed_bytes += len(body)

    def _forget(self, block: Sealed) -> None:
        if self._sealed.pop(block.first_id, None) is not None and self._spill is None:
            self._sealed_bytes -= len(block.body)

    def evict_upto(self, frame_id: int) -> None:
        frames = self._frames
        while frames:
            oldest = next(iter(frames))
            if oldest > frame_id:
                break
            self._samples -= len(frames.popitem(last=False)[1])
        pending = self._pending
        while pending and next(iter(pending)) <= frame_id:
            self._pending_samples -= len(pending.popitem(last=False)[1])
        sealed = self._sealed
        while sealed:
            block = next(iter(sealed.values()))
            if block.last_id > frame_id:
                break
            self._forget(block)
        if self._spill is not None:
            self._spill.release_upto(frame_id)
            self._sealed_bytes = self._spill.bytes

    def discard(self, frame_ids: Iterable[int]) -> None:
        """Forget frames deleted from the buffer (drop_oldest), wherever they are; a block
        with one of them goes whole (its other frames are read back from SQLite)."""
        frames, pending = self._frames, self._pending
        ids = list(frame_ids)
        for frame_id in ids:
            entries = frames.pop(frame_id, None)
            if entries is not None:
                self._samples -= len(entries)
            entries = pending.pop(frame_id, None)
            if entries is not None:
                self._pending_samples -= len(entries)
        if self._sealed and ids:
            low, high = min(ids), max(ids)
            hit = [b for b in self._sealed.values() if b.first_id <= high and b.last_id >= low
                   and any(b.first_id <= i <= b.last_id for i in ids)]
            for block in hit:
                self._forget(block)

    def oldest_id(self) -> int | None:
        pending = next(iter(self._pending), None)
        return pending if pending is not None else next(iter(self._frames), None)

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def samples(self) -> int:
        return self._samples


def serves_next_frame_of(cache: EntryCache, cursors: Iterable[int]) -> bool:
    """Every cursor's next frame is in the cache (or nothing is cached yet): the forwarders
    read from memory, not from SQLite."""
    oldest = cache.oldest_id()
    return oldest is None or all(cursor + 1 >= oldest for cursor in cursors)
