"""Secrets read from files: bearer tokens, passwords. Owns reading them and keeping them out of
text an operator sees. Imports nothing of the gateway but errors.

A `CredentialFile` is re-read when the file changes (its mtime, size or inode), as Prometheus
does for its token files, so an operator fixes a wrong token by rewriting the file; no restart.
Its value never appears in its repr, and `redact()` removes every credential the gateway sent
(and its base64 form, as a Basic header carries it) from a receiver's answer before the answer
is logged or shown.
"""

from __future__ import annotations

import base64
import os
import re
import threading
from collections.abc import Iterable
from pathlib import Path

from gateway.errors import ConfigError

# A file holding a secret is small; a bigger one is a wrong path (a log file, a binary).
MAX_CREDENTIAL_BYTES = 64 * 1024
REDACTED = "<redacted>"
_AUTH_HEADER_VALUE = re.compile(r"(?i)\b(bearer|basic)\s+[^\s\"']+")


class CredentialFile:
    """One secret in one file: the file's content without its trailing line break."""

    __slots__ = ("_lock", "_stamp", "_value", "path", "what")

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what  # e.g. "bearer_token_file of endpoint vm": names it in errors
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._value = ""
        self.read()  # a missing or empty file is a start-up error, not a first-request one

    def __repr__(self) -> str:
        return f"CredentialFile({str(self.path)!r}, {self.what!r})"

    def read(self) -> str:
        """The secret; read again if the file changed since the last read. A file that
        disappears or empties after start-up keeps the last value (a rewrite in progress)."""
        try:
            stat = os.stat(self.path)
        except OSError as exc:
            if self._stamp is not None:
                return self._value
            raise ConfigError(f"{self.what}: cannot read {self.path}: {exc.strerror}",
                              hint="the file must exist and be readable by the gateway") from exc
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        with self._lock:
            if stamp != self._stamp:
                value = self._load(stat.st_size)
                if value or self._stamp is None:
                    self._value = value
                self._stamp = stamp
            return self._value

    def _load(self, size: int) -> str:
        if size > MAX_CREDENTIAL_BYTES:
            raise ConfigError(f"{self.what}: {self.path} has {size} bytes; a credential file "
                              f"holds one secret (at most {MAX_CREDENTIAL_BYTES} bytes)")
        try:
            value = self.path.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            if self._stamp is not None:
                return self._value
            raise ConfigError(f"{self.what}: cannot read {self.path}: {exc}") from exc
        if not value and self._stamp is None:
            raise ConfigError(f"{self.what}: {self.path} is empty")
        if "\n" in value or "\r" in value:
            raise ConfigError(f"{self.what}: {self.path} holds more than one line; it must "
                              "hold the secret alone")
        return value


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret (and its base64, and any Bearer/Basic header value) replaced."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
        encoded = base64.b64encode(secret.encode()).decode()
        text = text.replace(encoded, REDACTED)
    return _AUTH_HEADER_VALUE.sub(rf"\1 {REDACTED}", text)


def basic_credentials(username: str, password: str) -> str:
    """The base64 of "username:password", as a Basic Authorization header carries it."""
    return base64.b64encode(f"{username}:{password}".encode()).decode()
