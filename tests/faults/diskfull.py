"""A real full disk under the gateway's data dir: a small tmpfs, filled to ENOSPC by a file.

`Tmpfs(path, size_kib)` mounts a tmpfs of that size on `path` (root only: in CI a missing
capability fails, elsewhere it skips, as tests/support/tools.py does for a missing tool). `fill()`
writes a filler file until the kernel answers ENOSPC; `free()` deletes it. `close()` unmounts,
also when the test fails (a lazy unmount if something still holds a file open), and is safe to
call twice. Only the mount made here is ever touched.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

from tests.faults.netns import capability_missing, require_root, tool

_CHUNK = 64 * 1024


class Tmpfs:
    def __init__(self, path: Path, size_kib: int) -> None:
        require_root("mounting a tmpfs")
        self.mount_bin, self.umount_bin = tool("mount"), tool("umount")
        self.path = path
        self.size_kib = size_kib
        self.filler = path / "filler.bin"
        self._mounted = False

    def open(self) -> Tmpfs:
        self.path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([self.mount_bin, "-t", "tmpfs", "-o", f"size={self.size_kib}k",
                               "tmpfs", str(self.path)], capture_output=True, text=True,
                              timeout=30)
        if done.returncode != 0:
            capability_missing(f"cannot mount a tmpfs on {self.path}: {done.stderr.strip()}")
        self._mounted = True
        return self

    def fill(self) -> int:
        """Write the filler until ENOSPC; the bytes it took."""
        written = 0
        chunk = _CHUNK
        with open(self.filler, "ab", buffering=0) as out:
            while chunk:
                try:
                    written += out.write(b"\0" * chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    chunk //= 2  # the last pages: down to a byte, so nothing is left
        return written

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def available(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def close(self) -> None:
        if not self._mounted:
            return
        done = subprocess.run([self.umount_bin, str(self.path)], capture_output=True,
                              timeout=30)
        if done.returncode != 0:  # something still holds a file: detach it now, freed later
            subprocess.run([self.umount_bin, "-l", str(self.path)], capture_output=True,
                           timeout=30)
        self._mounted = False

    def __enter__(self) -> Tmpfs:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
