"""What goes into one request, in which order: the parts of frames a forwarder collected.

Remote-write 1.0: a sender MUST send a series' samples in timestamp order. The frame compiler
already sorts a frame whose samples carry time offsets, and records per frame its device and
its oldest and newest sample time (`FrameEntries`). So a request is in order when, per device,
each frame starts no earlier than the frames before it ended: a check per frame, not per sample.
Only a request where one device goes backwards (replayed history beside live frames, a stale
marker beside older samples) is sorted, by each entry's timestamp (stable).
Frames without that record (stale markers, the fleet's metrics, births' info entries) count as
belonging to every device: they are checked against all frames before them.

A request can also be a block the entry cache sealed (`seal`): frames that fell out of the cache
during an outage, compressed once as exactly the body a request of them would have; it is sent
as it is unless a frame of it was dropped meanwhile.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain

from gateway.buffer.entry_cache import FrameEntries, Sealed, SendWindows
from gateway.remote_write.wire import compress, entry_timestamp

Span = tuple[str | None, int, int]  # (device or None for "any", oldest ms, newest ms)
# (frame id, its entries in this request, all the frame's entries: a FrameEntries for a device
# frame, which says its device and time span)
Part = tuple[int, Sequence[bytes], Sequence[bytes]]

_NEVER = -(1 << 63)


def span_of(entries: Sequence[bytes]) -> Span | None:
    if isinstance(entries, FrameEntries):
        return entries.device, entries.first_ms, entries.last_ms
    if not entries:
        return None
    stamps = [entry_timestamp(entry) for entry in entries]
    return None, min(stamps), max(stamps)


def in_time_order(parts: Sequence[Part]) -> bool:
    """No series can go back in time across the parts, judged by their frames' spans."""
    newest: dict[str, int] = {}  # device -> newest time of its frames so far
    newest_any = _NEVER  # newest time of every frame so far
    newest_shared = _NEVER  # newest time of the frames that belong to every device
    for part in parts:
        frame = part[2]
        if type(frame) is FrameEntries:  # the common case: one check, no tuple
            first = frame.first_ms
            if first < newest_shared or first < newest.get(frame.device, _NEVER):
                return False
            last = newest[frame.device] = frame.last_ms  # >= first >= the device's newest
        else:
            span = span_of(frame)
            if span is None:
                continue
            first, last = span[1], span[2]
            if first < newest_any:
                return False
            newest_shared = max(newest_shared, last)
        if last > newest_any:
            newest_any = last
    return True


def request_body(parts: Sequence[Part]) -> bytes:
    """The uncompressed WriteRequest of the parts: their entries, in time order per series."""
    entries = chain.from_iterable(part[1] for part in parts)
    if in_time_order(parts):
        return b"".join(entries)
    listed = list(entries)
    stamps = [entry_timestamp(entry) for entry in listed]
    order = sorted(range(len(listed)), key=stamps.__getitem__)
    return b"".join([listed[i] for i in order])


def seal(frames: Sequence[tuple[int, Sequence[bytes]]]) -> bytes | None:
    """The entry cache's Sealer: the compressed body of a request of these whole frames, or
    None if that request would have to be sorted (a device's frames go back in time)."""
    if not in_time_order([(frame_id, entries, entries) for frame_id, entries in frames]):
        return None
    return compress(b"".join(chain.from_iterable(entries for _, entries in frames)))


class Request:
    """One request as it is attempted. Before each attempt the parts whose frames the
    drop_oldest policy deleted meanwhile are left out, and the rest is marked on the wire (not
    eligible for dropping) until `landed`: so a frame counted as dropped is never sent.
    Made of a sealed block, it is that block's body; its parts are read out of it only when
    needed (a frame of it dropped, the request refused and dead-lettered)."""

    def __init__(self, endpoint: str, parts: list[Part], windows: SendWindows,
                 sealed: Sealed | None = None) -> None:
        self.endpoint = endpoint
        self._parts = parts
        self._sealed = sealed
        self._windows = windows
        self._body: tuple[bytes, int] | None = None

    @property
    def parts(self) -> list[Part]:
        sealed = self._sealed
        if sealed is not None:  # from now on an ordinary request of those frames
            self._parts = [(frame_id, entries, entries) for frame_id, entries in sealed.frames()]
            self._sealed = None
        return self._parts

    @property
    def samples(self) -> int:
        sealed = self._sealed
        return sealed.samples if sealed is not None else sum(len(p[1]) for p in self._parts)

    async def attempt(self) -> tuple[bytes, int]:
        """The compressed body and its sample count (0: nothing left to send)."""
        windows = self._windows
        async with windows.lock:
            dropped = windows.dropped
            sealed = self._sealed
            if sealed is not None:
                first, last = sealed.first_id, sealed.last_id
                if not (dropped and any(first <= i <= last for i in dropped)):
                    windows.keep(self.endpoint, "wire", first - 1, last)
                    return sealed.body, sealed.samples
                self._body = None  # a frame of it was dropped: leave it out, as below
            parts = self.parts
            if dropped and any(part[0] in dropped for part in parts):
                parts = self._parts = [part for part in parts if part[0] not in dropped]
                self._body = None
            if parts:
                windows.keep(self.endpoint, "wire", parts[0][0] - 1, parts[-1][0])
        if self._body is None:
            count = sum(len(part[1]) for part in parts)
            self._body = (compress(request_body(parts)) if count else b"", count)
        return self._body

    def landed(self) -> None:
        self._windows.keep(self.endpoint, "wire", 0, 0)


def take(parts: list[Part], frame_id: int, entries: Sequence[bytes], start: int, room: int,
         limit: int) -> int:
    """Add what fits of a frame's entries from `start` to the request; how many were taken.
    A frame (or rest of one) that fits the request is taken whole; one larger than a whole
    request fills the room (it is split across requests); else none: the request is full."""
    remaining = len(entries) - start
    if remaining <= room:
        taken = remaining
    elif remaining > limit:
        taken = room
    else:
        return 0
    part = entries if start == 0 and taken == len(entries) else entries[start:start + taken]
    parts.append((frame_id, part, entries))
    return taken
