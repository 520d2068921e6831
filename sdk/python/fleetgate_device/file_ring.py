"""A ring of frames in a file: survives a process restart and a power cut.

The file is append-only: a header, then records `[length u32][crc32 u32][body]` (big-endian,
zlib.crc32 of the body). A body is one of
    F boot u32, seq u32, t u64, payload   a frame (its telemetry payload, h=true)
    B boot u32, payload                   the latest birth of a boot
    G boot u32, seq u32                   a frame gone: replayed and acknowledged, or dropped
On open the records are read back; the first one that is short, too long or fails its CRC is a
write the power cut tore, and the file is truncated there: every record before it survives,
and at most the frame being written is lost.

fsync policy: a frame or birth record is fsynced before `push`/`remember_birth` returns (one
per interval while offline, and a birth only when a boot or its declarations are new). A G
record is written but not fsynced: losing it in a power cut replays that frame once more, and
the gateway drops the copy by (boot, seq). When gone records outnumber the frames kept, the file
is rewritten (temporary file, fsync, rename, fsync of the directory).

After a restart the device has a new boot; the frames of the old one are replayed with their
own boot and seq, after that boot's birth (kept here), which the gateway stores per
(device, boot) without making the old boot current again (docs/protocol.md).
"""

from __future__ import annotations

import fcntl
import os
import struct
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import BinaryIO

from fleetgate_device.ring import Ringed

MAGIC = b"FGRING1\n"
_HEAD = struct.Struct(">II")
_FRAME = struct.Struct(">IIQ")
_BOOT = struct.Struct(">I")
_GONE = struct.Struct(">II")
_MAX_BODY = 1 << 20  # a payload is at most 64 KiB: a longer length is a torn record
_COMPACT_MIN = 64


class FileRing:
    persistent = True

    def __init__(self, path: str | Path, size: int) -> None:
        if size < 0:
            raise ValueError(f"ring size must be >= 0, got {size}")
        self.path = Path(path)
        self.size = size
        self._waiting: OrderedDict[tuple[int, int], Ringed] = OrderedDict()
        self._taken: dict[tuple[int, int], Ringed] = {}
        self._births: dict[int, bytes] = {}
        self._last_boot: int | None = None  # of the latest birth record
        self._gone = 0  # G records in the file
        self.truncated_bytes = 0  # a torn tail cut off at open
        self.dropped_at_open = 0  # frames beyond `size` when the file was opened
        self._file = self._open()

    # --- the file ---------------------------------------------------------------------------

    def _open(self) -> BinaryIO:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+b")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise ValueError(f"ring file {self.path} is in use by another process") from None
        f.seek(0)
        data = f.read()
        if len(data) < len(MAGIC) and MAGIC.startswith(data):  # new, or torn at creation
            f.truncate(0)
            f.write(MAGIC)
            _sync(f)
            return f
        if not data.startswith(MAGIC):
            f.close()
            raise ValueError(f"{self.path} is not a fleetgate ring file")
        end = self._load(data)
        if end < len(data):
            self.truncated_bytes = len(data) - end
            f.truncate(end)
            _sync(f)
        while len(self._waiting) > self.size:
            self._waiting.popitem(last=False)
            self.dropped_at_open += 1
        return f

    def _load(self, data: bytes) -> int:
        """Apply every whole record; returns the offset where the good records end."""
        pos = len(MAGIC)
        while pos + _HEAD.size <= len(data):
            length, crc = _HEAD.unpack_from(data, pos)
            body = data[pos + _HEAD.size: pos + _HEAD.size + length]
            if length > _MAX_BODY or len(body) < length or zlib.crc32(body) != crc:
                break
            if not self._apply(body):
                break
            pos += _HEAD.size + length
        return pos

    def _apply(self, body: bytes) -> bool:
        kind, rest = body[:1], body[1:]
        if kind == b"F" and len(rest) >= _FRAME.size:
            boot, seq, t = _FRAME.unpack_from(rest)
            self._waiting[boot, seq] = Ringed(boot, seq, t, rest[_FRAME.size:])
        elif kind == b"B" and len(rest) >= _BOOT.size:
            (boot,) = _BOOT.unpack_from(rest)
            self._births[boot] = rest[_BOOT.size:]
            self._last_boot = boot
        elif kind == b"G" and len(rest) == _GONE.size:
            self._waiting.pop(_GONE.unpack(rest), None)
            self._gone += 1
        else:
            return False
        return True

    def _append(self, body: bytes, sync: bool) -> None:
        self._file.seek(0, os.SEEK_END)
        self._file.write(_HEAD.pack(len(body), zlib.crc32(body)) + body)
        if sync:
            _sync(self._file)
        else:
            self._file.flush()

    # --- the Ring protocol ------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._waiting)

    def push(self, frame: Ringed) -> int:
        if self.size == 0:
            return 1
        dropped = 0
        if len(self._waiting) >= self.size:
            (boot, seq), _ = self._waiting.popitem(last=False)
            self._append(b"G" + _GONE.pack(boot, seq), sync=False)
            self._gone += 1
            dropped = 1
        self._waiting[frame.boot, frame.seq] = frame
        self._append(b"F" + _FRAME.pack(frame.boot, frame.seq, frame.time_ms) + frame.payload,
                     sync=True)
        return dropped

    def take(self) -> Ringed | None:
        if not self._waiting:
            return None
        key, frame = self._waiting.popitem(last=False)
        self._taken[key] = frame
        return frame

    def done(self, frame: Ringed) -> None:
        if self._taken.pop((frame.boot, frame.seq), None) is None:
            return
        self._append(b"G" + _GONE.pack(frame.boot, frame.seq), sync=False)
        self._gone += 1
        if self._gone >= _COMPACT_MIN and self._gone > len(self._waiting) + len(self._taken):
            self._compact()

    def remember_birth(self, boot: int, payload: bytes) -> None:
        if self._births.get(boot) == payload:
            return
        self._births[boot] = payload
        self._last_boot = boot
        self._append(b"B" + _BOOT.pack(boot) + payload, sync=True)

    def birth(self, boot: int) -> bytes | None:
        return self._births.get(boot)

    def close(self) -> None:
        if not self._file.closed:
            _sync(self._file)
            self._file.close()

    def _compact(self) -> None:
        """Rewrite the file with what is still needed: the births of boots that have frames
        (and the latest), then the frames, taken ones first (they are the oldest)."""
        frames = [*self._taken.values(), *self._waiting.values()]
        keep = {f.boot for f in frames} | ({self._last_boot} if self._last_boot is not None
                                           else set())
        self._births = {b: p for b, p in self._births.items() if b in keep}
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as out:
            out.write(MAGIC)
            bodies = [b"B" + _BOOT.pack(b) + p for b, p in self._births.items()]
            bodies += [b"F" + _FRAME.pack(f.boot, f.seq, f.time_ms) + f.payload for f in frames]
            for body in bodies:
                out.write(_HEAD.pack(len(body), zlib.crc32(body)) + body)
            _sync(out)
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self._file.close()
        self._file = open(self.path, "a+b")
        fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._gone = 0


def _sync(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())
