"""The one error family of the wire codec.

    ProtocolError                 reason (short, stable) + detail (field, value, what is allowed)
    ├── FrameTooLarge             payload over Limits.max_payload_bytes
    ├── MalformedPayload          not msgpack, truncated, too deep, absurd sizes, not a map
    ├── UnsupportedVersion        `v` is not a version this codec speaks
    ├── SchemaError               missing field, wrong type, value out of range, too many items
    ├── InvalidName               bad metric name, label name or label value
    ├── InvalidBirth              duplicate alias/name, unknown metric type, bad histogram bounds
    ├── TimestampOutOfRange       sample time negative or too far ahead of the receiver's clock
    ├── InvalidTopic              topic outside the protocol's topic tree
    └── NeedsBirth                telemetry cannot be resolved without its boot's birth
        ├── BirthRequired         no birth known for this boot
        └── UnknownAlias          birth known, but the alias / histogram is not declared in it

Every decode_* and resolve_* function raises only these; any other exception escaping them is
a bug. `reason` is meant for counters and logs (few distinct values, no payload data in it);
`detail` is for the human who has to fix the firmware.
"""

from __future__ import annotations


class ProtocolError(Exception):
    reason: str
    detail: str

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


class FrameTooLarge(ProtocolError):
    pass


class MalformedPayload(ProtocolError):
    pass


class UnsupportedVersion(ProtocolError):
    pass


class SchemaError(ProtocolError):
    pass


class InvalidName(ProtocolError):
    pass


class InvalidBirth(ProtocolError):
    pass


class TimestampOutOfRange(ProtocolError):
    pass


class InvalidTopic(ProtocolError):
    pass


class NeedsBirth(ProtocolError):
    """The frame may be fine; the receiver lacks the birth that gives it meaning.

    The usual remedy is to keep the frame and ask the device to rebirth (cmd topic).
    """


class BirthRequired(NeedsBirth):
    pass


class UnknownAlias(NeedsBirth):
    pass
