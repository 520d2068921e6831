"""The PUBLISH parser (gateway/ingest/publish.py): garbage only ever yields PublishRefused; every
well-formed MQTT 5 PUBLISH round-trips, whether built by the encoder below (written from the
MQTT 5.0 spec, not from the parser) or by paho's own."""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.ingest.publish import (
    Publish,
    PublishRefused,
    Refusal,
    parse_publish,
    split_publish,
)

# The VM these run on is noisy: a slow example is not a failure.
PROPERTY = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                          HealthCheck.data_too_large],
                    max_examples=150)
FUZZ = settings(PROPERTY, max_examples=400)


# --- an encoder from the MQTT 5.0 spec (OASIS standard, 7 March 2019)
def varint(value: int) -> bytes:
    """§1.5.5 Variable Byte Integer, the spec's own encoding algorithm."""
    out = bytearray()
    while True:
        byte, value = value % 128, value // 128
        if value > 0:
            byte |= 128
        out.append(byte)
        if value == 0:
            return bytes(out)


def two(value: int) -> bytes:  # §1.5.2 Two Byte Integer, big-endian
    return value.to_bytes(2, "big")


def string(data: bytes) -> bytes:  # §1.5.4 UTF-8 Encoded String, §1.5.6 Binary Data
    return two(len(data)) + data


# §3.3.2.3: the PUBLISH properties, identifier -> how its value is encoded (§2.2.2.2)
PROPERTY_VALUES: dict[int, st.SearchStrategy[bytes]] = {
    0x01: st.integers(0, 1).map(lambda v: bytes([v])),  # Payload Format Indicator: Byte
    0x02: st.integers(0, 2**32 - 1).map(lambda v: v.to_bytes(4, "big")),  # Message Expiry
    0x23: st.integers(1, 65535).map(two),  # Topic Alias: Two Byte Integer
    0x08: st.text(max_size=30).map(lambda s: string(s.encode())),  # Response Topic
    0x09: st.binary(max_size=30).map(string),  # Correlation Data: Binary Data
    0x26: st.tuples(st.text(max_size=20), st.text(max_size=60)).map(  # User Property: pair
        lambda kv: string(kv[0].encode()) + string(kv[1].encode())),
    0x0B: st.integers(1, 268_435_455).map(varint),  # Subscription Identifier
    0x03: st.text(max_size=30).map(lambda s: string(s.encode())),  # Content Type
}
PROPERTIES = st.lists(
    st.sampled_from(sorted(PROPERTY_VALUES)).flatmap(
        lambda ident: PROPERTY_VALUES[ident].map(lambda value: varint(ident) + value)),
    max_size=8,
).map(b"".join)


def encode_publish(message: Publish, properties: bytes = b"") -> bytes:
    """§3.3: fixed header (type 3, DUP, QoS, RETAIN), remaining length, topic name, packet id
    (QoS 1 and 2 only), property length and properties, payload."""
    header = 0x30 | message.dup << 3 | message.qos << 1 | message.retain
    variable = string(message.topic)
    if message.qos:
        variable += two(message.mid)
    variable += varint(len(properties)) + properties
    rest = variable + message.payload
    return bytes([header]) + varint(len(rest)) + rest


def body_of(packet: bytes) -> bytes:
    """The bytes after the fixed header and remaining length: what paho hands the fast path."""
    pos = 1
    while packet[pos] & 0x80:
        pos += 1
    return packet[pos + 1:]


# Lengths that reach each size of the remaining length (1-4 bytes: up to 127, 16,383,
# 2,097,151, 268,435,455) come from a few long payloads and topics among many short ones.
def filler(size: int) -> bytes:
    return b"\xa5" * size


TOPICS = st.one_of(st.text(min_size=1, max_size=40).map(str.encode),
                   st.binary(min_size=1, max_size=40),  # the pipeline, not the parser, checks UTF-8
                   st.integers(1, 65535).map(filler))
PAYLOADS = st.one_of(st.binary(max_size=300), st.integers(0, 2_200_000).map(filler))


@st.composite
def publishes(draw: st.DrawFn) -> Publish:
    qos = draw(st.integers(0, 2))
    return Publish(topic=draw(TOPICS), payload=draw(PAYLOADS),
                   mid=draw(st.integers(1, 65535)) if qos else 0, qos=qos,
                   dup=draw(st.booleans()) if qos else False, retain=draw(st.booleans()))


@PROPERTY
@given(publishes(), st.one_of(st.just(b""), PROPERTIES))
def test_every_well_formed_publish_round_trips(message: Publish, properties: bytes) -> None:
    packet = encode_publish(message, properties)
    assert parse_publish(packet) == message
    topic, payload, mid = split_publish(bytearray(body_of(packet)), message.qos)  # paho's type
    assert (topic, payload, mid) == (message.topic, message.payload, message.mid)
    assert type(topic) is bytes and type(payload) is bytes


@pytest.mark.parametrize("remaining, length_bytes", [
    (4, 1), (127, 1), (128, 2), (16_383, 2), (16_384, 3), (2_097_151, 3), (2_097_152, 4)])
def test_remaining_lengths_of_one_to_four_bytes(remaining: int, length_bytes: int) -> None:
    # topic "t" (3 bytes) and an empty property length (1 byte) leave the rest to the payload
    message = Publish(b"t", filler(remaining - 4), 0, 0, False, False)
    packet = encode_publish(message)
    assert len(packet) == 1 + length_bytes + remaining
    assert parse_publish(packet) == message


def refusal(call: Any, *args: Any) -> Refusal | None:
    try:
        call(*args)
    except PublishRefused as refused:
        return refused.reason
    return None


@FUZZ
@given(st.binary(max_size=400))
def test_arbitrary_bytes_parse_or_are_refused_never_anything_else(data: bytes) -> None:
    refusal(parse_publish, data)
    for qos in range(4):
        refusal(split_publish, data, qos)


@FUZZ
@given(publishes().filter(lambda m: len(m.payload) < 1000 and len(m.topic) < 1000),
       PROPERTIES, st.data())
def test_damaged_packets_parse_or_are_refused(message: Publish, properties: bytes,
                                              data: st.DataObject) -> None:
    packet = bytearray(encode_publish(message, properties))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(packet) - 1))
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip":
            packet[at] ^= data.draw(st.integers(1, 255))
        elif action == "cut":
            del packet[at]
        else:
            packet.insert(at, data.draw(st.integers(0, 255)))
    refusal(parse_publish, bytes(packet))
    refusal(split_publish, bytes(packet[2:]), message.qos)


@PROPERTY
@given(publishes().filter(lambda m: len(m.payload) < 300 and len(m.topic) < 300), PROPERTIES)
def test_truncated_packets_are_refused(message: Publish, properties: bytes) -> None:
    packet = encode_publish(message, properties)
    for cut in range(len(packet)):
        assert refusal(parse_publish, packet[:cut]) is not None
    # a body cut before its payload starts never parses into something wrong
    body = body_of(packet)
    for cut in range(len(body) - len(message.payload)):
        assert refusal(split_publish, body[:cut], message.qos) is not None


def test_refusals_name_their_reason() -> None:
    ok = Publish(b"fleet/d/telemetry", b"frame", 7, 1, False, False)
    packet = encode_publish(ok)
    assert refusal(split_publish, b"\x00\x00\x00\x05\x00hi", 1) is Refusal.TOPIC_ALIAS
    assert refusal(parse_publish, b"\x20\x02\x00\x00") is Refusal.NOT_PUBLISH  # a CONNACK
    assert refusal(parse_publish, b"\x36" + packet[1:]) is Refusal.NOT_PUBLISH  # QoS 3
    assert refusal(parse_publish, b"\x38" + packet[1:]) is Refusal.NOT_PUBLISH  # DUP on QoS 0
    assert refusal(parse_publish, packet + b"\x00") is Refusal.LENGTH_MISMATCH
    assert refusal(parse_publish, b"\x30\x80\x80\x80\x80\x01") is Refusal.BAD_VARINT  # 5 bytes
    assert refusal(parse_publish, b"\x30\x80\x00") is Refusal.BAD_VARINT  # not the shortest
    zero_mid = encode_publish(Publish(b"t", b"", 0, 1, False, False))
    assert refusal(parse_publish, zero_mid) is Refusal.ZERO_PACKET_ID
    for properties in (b"\x11\x00\x00\x00\x01",  # Session Expiry: a CONNECT property
                       b"\x26\x00\x05ab",  # a user property that overruns its length
                       b"\x0b\x00"):  # subscription identifier 0
        bad = encode_publish(ok, properties)
        assert refusal(parse_publish, bad) is Refusal.BAD_PROPERTY, properties
    assert str(PublishRefused(Refusal.TRUNCATED)) == Refusal.TRUNCATED.value


# --- packets built by paho's own encoder. paho has no public packet encoder: these go through
# the public Client.publish() and Properties, and are taken where paho queues them for the
# socket (the private _packet_queue, pinned by tests/stages/test_ingest.py).
def paho_packet(topic: str, payload: bytes, qos: int, retain: bool,
                properties: Properties | None) -> tuple[bytes, int]:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    queued: list[bytes] = []

    def packet_queue(command: int, packet: bytes | bytearray, mid: int, qos: int,
                     info: mqtt.MQTTMessageInfo | None = None) -> MQTTErrorCode:
        queued.append(bytes(packet))
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    client._packet_queue = packet_queue  # type: ignore[method-assign]
    client._sock = object()  # type: ignore[assignment]  # "connected": publish() sends
    info = client.publish(topic, payload, qos, retain, properties)
    client._sock = None
    (packet,) = queued
    return packet, info.mid


@st.composite
def paho_properties(draw: st.DrawFn) -> Properties | None:
    if not draw(st.booleans()):
        return None
    props = Properties(PacketTypes.PUBLISH)
    props.PayloadFormatIndicator = draw(st.integers(0, 1))
    props.MessageExpiryInterval = draw(st.integers(0, 2**32 - 1))
    props.ContentType = draw(st.text(max_size=20))
    props.ResponseTopic = draw(st.text(max_size=20))
    props.CorrelationData = draw(st.binary(max_size=20))
    props.UserProperty = draw(st.lists(st.tuples(st.text(max_size=10), st.text(max_size=200)),
                                       min_size=1, max_size=3))
    return props


@PROPERTY
@given(st.text(min_size=1, max_size=60).filter(lambda t: not set(t) & set("+#\x00")),
       PAYLOADS, st.integers(0, 2), st.booleans(), paho_properties())
def test_packets_paho_encodes_round_trip(topic: str, payload: bytes, qos: int, retain: bool,
                                         properties: Properties | None) -> None:
    packet, mid = paho_packet(topic, payload, qos, retain, properties)
    expected = Publish(topic.encode(), payload, mid if qos else 0, qos, False, retain)
    assert parse_publish(packet) == expected
    assert split_publish(bytearray(body_of(packet)), qos) == (
        expected.topic, expected.payload, expected.mid)
