"""The codec's public functions in one place; each job lives in its own module:

    birth.py      decode_birth
    telemetry.py  decode_telemetry (the hot path)
    resolve.py    resolve_telemetry (aliases and birth labels applied)
    encode.py     encode_* (frames -> shortest msgpack)
    here          decode_death, decode_command, decode_gateway_state (a field or two each)

Decoding is pure: bytes and a Limits in, a frozen frame out, or a ProtocolError. Unknown map
keys are ignored so that v1 devices may add fields; everything the codec reads is checked.
"""

from __future__ import annotations

from .birth import decode_birth
from .encode import (
    encode_birth,
    encode_command,
    encode_death,
    encode_gateway_state,
    encode_telemetry,
)
from .frames import Command, Death, GatewayState
from .limits import DEFAULT_LIMITS, Limits
from .resolve import resolve_telemetry
from .telemetry import decode_telemetry, decode_telemetry_rows
from .wire import check_version, get_bool, get_time_ms, get_uint32, unpack_map

__all__ = [
    "decode_birth",
    "decode_command",
    "decode_death",
    "decode_gateway_state",
    "decode_telemetry",
    "decode_telemetry_rows",
    "encode_birth",
    "encode_command",
    "encode_death",
    "encode_gateway_state",
    "encode_telemetry",
    "resolve_telemetry",
]


def decode_death(payload: bytes, *, limits: Limits = DEFAULT_LIMITS) -> Death:
    obj = unpack_map(payload, limits)
    check_version(obj)
    return Death(get_uint32(obj, "b", "boot"))


def decode_command(payload: bytes) -> Command:
    obj = unpack_map(payload, DEFAULT_LIMITS)
    return Command(rebirth=get_bool(obj, "rebirth", "rebirth", default=False))


def decode_gateway_state(payload: bytes) -> GatewayState:
    obj = unpack_map(payload, DEFAULT_LIMITS)
    return GatewayState(get_bool(obj, "online", "online"), get_time_ms(obj))
