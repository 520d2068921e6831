"""The gateway's error tree. Every error says what broke, for which device or endpoint, and
whether retrying can help.

    GatewayError
    ├── ConfigError            settings invalid at start-up (never retryable)
    ├── StoreError             SQLite failed; `retryable` when the cause may pass (disk full, busy)
    │   ├── MigrationError     a migration file failed or the schema is newer than this build
    │   └── BufferFull         the buffer's size cap is reached under the "block" policy
    └── ForwardError           a remote-write endpoint could not take a batch
        └── BatchRejected      the endpoint refused samples (4xx); they go to the dead letters

Protocol problems of a single frame are `device_protocol.ProtocolError`: they are handled per
frame (quarantine) and never escape the pipeline.
"""

from __future__ import annotations


class GatewayError(Exception):
    retryable: bool = False

    def __init__(self, message: str, *, hint: str = "", retryable: bool | None = None) -> None:
        super().__init__(message)
        self.hint = hint
        if retryable is not None:
            self.retryable = retryable

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base} (hint: {self.hint})" if self.hint else base


class ConfigError(GatewayError):
    pass


class StoreError(GatewayError):
    pass


class MigrationError(StoreError):
    pass


class BufferFull(StoreError):
    retryable = True


class ForwardError(GatewayError):
    def __init__(self, message: str, *, endpoint: str, hint: str = "",
                 retryable: bool | None = None) -> None:
        super().__init__(f"{endpoint}: {message}", hint=hint, retryable=retryable)
        self.endpoint = endpoint


class BatchRejected(ForwardError):
    retryable = False
