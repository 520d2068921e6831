"""The MQTT 5 PUBLISH parser: bytes in, (topic, payload, packet id) or a `PublishRefused` out.

Pure, like `device_protocol`: no paho, no sockets, no asyncio. Any input either parses or raises
`PublishRefused` with a `Refusal` saying why; any other exception is a bug (the fuzz tests in
tests/logic/test_publish_parser.py hold it to that).

Two entry points:
- `split_publish(body, qos)`: what the fast path calls per message, with paho's split of the
  packet (the QoS from the fixed header, the body after the remaining length). It reads the
  topic, the packet id and the payload, and checks the MQTT 5 properties' framing without
  building anything from them (the gateway reads no publish property; paho's Properties object
  per message was about a tenth of the gateway's CPU, see fastpath.py).
- `parse_publish(packet)`: one whole packet as on the wire (fixed header, remaining length).

A refusal is not an error of the gateway: the fast path hands such a packet to paho's own
handler, which decodes it (or raises its own protocol error) exactly as stock paho would.
Topics are returned as the bytes sent; UTF-8 validity is the pipeline's check (it quarantines).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

Buffer = bytes | bytearray | memoryview

_PUBLISH = 3  # packet type in the high nibble of the fixed header
_VARINT_MAX_BYTES = 4  # MQTT 5 §1.5.5: a variable byte integer is at most 4 bytes

# MQTT 5 §3.3.2.3: the properties a PUBLISH may carry, by identifier.
_FIXED_SIZE = {0x01: 1, 0x02: 4, 0x23: 2}  # payload format, message expiry, topic alias
# content type, response topic, correlation data: one length-prefixed field; user property: two
_PREFIXED_FIELDS = {0x03: 1, 0x08: 1, 0x09: 1, 0x26: 2}
_SUBSCRIPTION_ID = 0x0B  # a variable byte integer, 1..268,435,455


class Refusal(enum.Enum):
    NOT_PUBLISH = "the fixed header is not a PUBLISH's (type 3, QoS 0-2, no DUP on QoS 0)"
    TRUNCATED = "the packet ends before its lengths say it does"
    LENGTH_MISMATCH = "the remaining length does not match the bytes given"
    BAD_VARINT = "a variable byte integer over 4 bytes or not in its shortest form"
    TOPIC_ALIAS = "an empty topic name: a topic alias, which only the session can resolve"
    ZERO_PACKET_ID = "packet id 0 on a QoS 1 or 2 PUBLISH"
    BAD_PROPERTY = "a property a PUBLISH may not carry, or one that overruns its length"


class PublishRefused(Exception):
    """The bytes are not a PUBLISH this parser takes; `reason` says why."""

    def __init__(self, reason: Refusal) -> None:
        super().__init__(reason.value)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Publish:
    topic: bytes
    payload: bytes
    mid: int  # 0 on QoS 0, which has no packet id
    qos: int
    dup: bool
    retain: bool


def parse_publish(packet: Buffer) -> Publish:
    """One whole PUBLISH packet (fixed header, remaining length, body) and nothing after it."""
    if not packet:
        raise PublishRefused(Refusal.TRUNCATED)
    header = packet[0]
    qos = (header >> 1) & 0x03
    dup = bool(header & 0x08)
    if header >> 4 != _PUBLISH or qos == 3 or (dup and qos == 0):
        raise PublishRefused(Refusal.NOT_PUBLISH)
    remaining, start = _varint(packet, 1, len(packet))
    if len(packet) - start != remaining:
        raise PublishRefused(Refusal.LENGTH_MISMATCH)
    topic, payload, mid = split_publish(memoryview(packet)[start:], qos)
    return Publish(topic, payload, mid, qos, dup, bool(header & 0x01))


def split_publish(body: Buffer, qos: int) -> tuple[bytes, bytes, int]:
    """(topic, payload, packet id) of a PUBLISH body: the bytes after the remaining length.

    The hot path of the fast receive path (one call per message): keep it lean.
    """
    if not 0 <= qos <= 2:
        raise PublishRefused(Refusal.NOT_PUBLISH)
    size = len(body)
    if size < 2:
        raise PublishRefused(Refusal.TRUNCATED)
    end = 2 + ((body[0] << 8) | body[1])
    if end == 2:
        raise PublishRefused(Refusal.TOPIC_ALIAS)
    mid = 0
    pos = end
    if qos:
        pos += 2
        if pos > size:
            raise PublishRefused(Refusal.TRUNCATED)
        mid = (body[end] << 8) | body[end + 1]
        if not mid:
            raise PublishRefused(Refusal.ZERO_PACKET_ID)
    # property length: a variable byte integer (1-4 bytes), then the properties themselves
    if pos >= size:
        raise PublishRefused(Refusal.TRUNCATED)
    props = body[pos]
    if props < 0x80:
        pos += 1
    else:
        props, pos = _varint(body, pos, size)
    if props:
        _check_properties(body, pos, pos + props, size)
        pos += props
    if pos > size:
        raise PublishRefused(Refusal.TRUNCATED)
    return bytes(body[2:end]), bytes(body[pos:]), mid


def _varint(buf: Buffer, pos: int, size: int) -> tuple[int, int]:
    """(value, position after it) of the variable byte integer at pos (MQTT 5 §1.5.5)."""
    value = shift = 0
    for count in range(_VARINT_MAX_BYTES):
        if pos >= size:
            raise PublishRefused(Refusal.TRUNCATED)
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if count and not byte:  # [MQTT-1.5.5-1]: the shortest encoding only
                raise PublishRefused(Refusal.BAD_VARINT)
            return value, pos
        shift += 7
    raise PublishRefused(Refusal.BAD_VARINT)


def _check_properties(buf: Buffer, pos: int, end: int, size: int) -> None:
    """Each property between pos and end is one a PUBLISH may carry and ends by end."""
    if end > size:
        raise PublishRefused(Refusal.TRUNCATED)
    while pos < end:
        ident = buf[pos]  # every PUBLISH property id is below 128: a one-byte integer
        pos += 1
        if ident in _FIXED_SIZE:
            pos += _FIXED_SIZE[ident]
        elif ident in _PREFIXED_FIELDS:
            for _ in range(_PREFIXED_FIELDS[ident]):
                if pos + 2 > end:
                    raise PublishRefused(Refusal.BAD_PROPERTY)
                pos += 2 + ((buf[pos] << 8) | buf[pos + 1])
        elif ident == _SUBSCRIPTION_ID:
            value, pos = _varint(buf, pos, end)
            if not value:
                raise PublishRefused(Refusal.BAD_PROPERTY)
        else:
            raise PublishRefused(Refusal.BAD_PROPERTY)
        if pos > end:
            raise PublishRefused(Refusal.BAD_PROPERTY)
