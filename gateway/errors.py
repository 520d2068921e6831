"""The gateway's error tree. Every error says what broke, for which device or endpoint, and
whether retrying can help.

    GatewayError
    ├── ConfigError            settings invalid at start-up (never retryable)
    ├── StoreError             SQLite failed; `retryable` when the cause may pass (disk full, busy)
    │   └── MigrationError     a migration file failed or the schema is newer than this build
    └── ForwardUnavailable     an endpoint cannot be reached now (a dead-letter replay asked)

Protocol problems of a single frame are `device_protocol.ProtocolError`: they are handled per
frame (quarantine) and never escape the pipeline. Remote-write outcomes are values, not errors
(`remote_write_client.Accepted | Retryable | Rejected`): a refusal is an expected result that the
forwarder handles (split, dead-letter), and a full buffer under the "block" policy makes ingest
wait rather than fail.
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


class ForwardUnavailable(GatewayError):
    retryable = True

    def __init__(self, endpoint: str, reason: str) -> None:
        super().__init__(f"{endpoint} cannot be reached: {reason}",
                         hint="retry when the endpoint is back (see /api/v1/pipeline)")
        self.endpoint = endpoint
        self.reason = reason
