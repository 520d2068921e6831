"""What goes into one request, in which order: the parts of frames a forwarder collected.

Remote-write 1.0: a sender MUST send a series' samples in timestamp order. The frame compiler
already sorts a frame whose samples carry time offsets, and records per frame its device and
its oldest and newest sample time (`FrameEntries`). So a request is in order when, per device,
each frame starts no earlier than the frames before it ended: a check per frame, not per sample.
Only a request where one device goes backwards (replayed history beside live frames, a stale
marker beside older samples) is sorted, by each entry's timestamp (stable).
Frames without that record (stale markers, the fleet's metrics, births' info entries) count as
belonging to every device: they are checked against all frames before them.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain

from gateway.buffer.entry_cache import FrameEntries, SendWindows
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


class Request:
    """One request as it is attempted. Before each attempt the parts whose frames the
    drop_oldest policy deleted meanwhile are left out, and the rest is marked on the wire (not
    eligible for dropping) until `landed`: so a frame counted as dropped is never sent."""

    def __init__(self, endpoint: str, parts: list[Part], windows: SendWindows) -> None:
        self.endpoint = endpoint
        self.parts = parts
        self._windows = windows
        self._body: tuple[bytes, int] | None = None

    async def attempt(self) -> tuple[bytes, int]:
        """The compressed body and its sample count (0: nothing left to send)."""
        windows = self._windows
        async with windows.lock:
            dropped = windows.dropped
            if dropped and any(part[0] in dropped for part in self.parts):
                self.parts = [part for part in self.parts if part[0] not in dropped]
                self._body = None
            if self.parts:
                windows.keep(self.endpoint, "wire", self.parts[0][0] - 1, self.parts[-1][0])
        if self._body is None:
            count = sum(len(part[1]) for part in self.parts)
            self._body = (compress(request_body(self.parts)) if count else b"", count)
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
