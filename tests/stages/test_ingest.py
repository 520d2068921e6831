"""The MQTT side: the Inbox hand-off, reconnect jitter, the fast path's private paho hooks, and
both receive paths (mqtt_fast_path on and off) against a real Mosquitto."""

from __future__ import annotations

import asyncio
import inspect
import socket
import threading
from typing import Protocol

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.ingest import publish as parser
from gateway.ingest.fastpath import BufferedSocket, FastClient
from gateway.ingest.inbox import InboundMessage, Inbox
from gateway.ingest.mqtt import MqttIngest
from gateway.settings import load_settings

FAST_PATH = pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "stock-paho"])


def message(i: int) -> InboundMessage:
    return InboundMessage("fleet/d/telemetry", b"x", i, 1, 1, 0)


def test_get_batch_takes_what_is_there_up_to_the_limit() -> None:
    async def go() -> None:
        inbox = Inbox(asyncio.get_running_loop(), max_in_hand=100)
        for i in range(5):
            inbox.put(message(i))
        assert [m.mid for m in await inbox.get_batch(3, 0.0)] == [0, 1, 2]
        assert [m.mid for m in await inbox.get_batch(10, 0.01)] == [3, 4]

    asyncio.run(go())


def test_put_from_another_thread_wakes_the_consumer_and_close_ends_it() -> None:
    async def go() -> None:
        inbox = Inbox(asyncio.get_running_loop(), max_in_hand=100)
        waiting = asyncio.ensure_future(inbox.get_batch(10, 0.0))
        await asyncio.sleep(0)
        threading.Thread(target=inbox.put, args=(message(7),)).start()
        assert [m.mid for m in await asyncio.wait_for(waiting, 5)] == [7]
        inbox.close()
        assert await asyncio.wait_for(inbox.get_batch(10, 1.0), 5) == []
        assert inbox.put(message(8)) is False  # refused: it stays with the broker

    asyncio.run(go())


def test_a_full_inbox_blocks_the_producer_until_acks_release_room() -> None:
    async def go() -> None:
        inbox = Inbox(asyncio.get_running_loop(), max_in_hand=2)
        inbox.put(message(1))
        inbox.put(message(2))
        third = threading.Thread(target=inbox.put, args=(message(3),))
        third.start()
        third.join(0.2)
        assert third.is_alive()  # paho's thread would wait here: backpressure
        batch = await inbox.get_batch(10, 0.0)
        inbox.release(len(batch))
        await asyncio.to_thread(third.join, 5)
        assert not third.is_alive()
        assert [m.mid for m in await inbox.get_batch(10, 0.0)] == [3]

    asyncio.run(go())


@FAST_PATH
def test_reconnect_delays_are_jittered_under_an_exponential_ceiling(fast_path: bool) -> None:
    async def go() -> None:
        settings = load_settings(None, mqtt_reconnect_min_s=1.0, mqtt_reconnect_max_s=8.0,
                                 mqtt_fast_path=fast_path)
        ingest = MqttIngest(settings.mqtt_config(), Inbox(asyncio.get_running_loop(), 10))
        seen = []
        for failures in range(8):
            ingest._failures = failures
            ingest._next_reconnect_delay()
            ceiling = min(8.0, 2.0 ** failures)
            assert 0.5 <= ingest._client_delay <= ceiling
            seen.append(ingest._client_delay)
        assert len(set(seen)) > 1

    asyncio.run(go())


def test_paho_still_has_the_packet_queue_the_batched_ack_uses() -> None:
    # gateway/ingest/fastpath.py writes one PUBACK run per group commit through paho's packet queue,
    # the same call client.ack() makes. An upgrade that changes it must fail here, loudly.
    params = list(inspect.signature(mqtt.Client._packet_queue).parameters)
    assert params[:5] == ["self", "command", "packet", "mid", "qos"]
    assert mqtt.PUBACK == 0x40


def test_buffered_socket_serves_small_reads_from_one_large_read() -> None:
    a, b = socket.socketpair()
    try:
        b.sendall(b"\x30\x05hello" + b"\x30\x03abc")
        buffered = BufferedSocket(a)
        assert buffered.recv(1) == b"\x30"  # one system call took all 12 bytes
        assert buffered.pending() == 11
        assert buffered.recv(1) == b"\x05"
        assert buffered.recv(5) == b"hello"
        assert buffered.recv(100) == b"\x30\x03abc"  # a short read: what is buffered
        assert buffered.pending() == 0
        b.close()
        assert buffered.recv(1) == b""  # EOF passes through
        assert buffered.fileno() == a.fileno()
    finally:
        a.close()


def test_paho_still_creates_sockets_where_the_buffered_reader_hooks_in() -> None:
    assert list(inspect.signature(mqtt.Client._create_socket).parameters) == ["self"]


def test_paho_still_hands_messages_to_the_hook_the_adapter_overrides() -> None:
    assert list(inspect.signature(mqtt.Client._handle_on_message).parameters) == [
        "self", "message"]


def test_loop_read_drains_everything_buffered_in_one_call() -> None:
    client = FastClient(CallbackAPIVersion.VERSION2)
    a, b = socket.socketpair()
    try:
        buffered = BufferedSocket(a)
        client._buffered = buffered
        b.sendall(b"x" * 10)
        reads: list[int] = []

        def fake_loop_read(self: object, max_packets: int = 1) -> MQTTErrorCode:
            reads.append(len(buffered.recv(3)))  # paho reads a packet: here 3 bytes a time
            return MQTTErrorCode.MQTT_ERR_SUCCESS

        original = mqtt.Client.loop_read
        mqtt.Client.loop_read = fake_loop_read  # type: ignore[method-assign]
        try:
            assert client.loop_read() == MQTTErrorCode.MQTT_ERR_SUCCESS
        finally:
            mqtt.Client.loop_read = original  # type: ignore[method-assign]
        assert reads == [3, 3, 3, 1]  # one select wake-up, every buffered byte handled
        assert buffered.pending() == 0
    finally:
        a.close()
        b.close()


def test_paho_still_routes_publish_packets_through_the_overridden_handler() -> None:
    assert list(inspect.signature(mqtt.Client._handle_publish).parameters) == ["self"]


def test_messages_paho_decodes_itself_reach_the_same_hand_off() -> None:
    client = FastClient(CallbackAPIVersion.VERSION2)
    seen: list[tuple[bytes, bytes, int, int]] = []
    client.deliver_raw = lambda *args: seen.append(args)
    message = mqtt.MQTTMessage(mid=5, topic=b"fleet/dev-1/telemetry")
    message.payload, message.qos = b"frame", 2
    client._handle_on_message(message)
    assert seen == [(b"fleet/dev-1/telemetry", b"frame", 5, 2)]


def test_paho_still_reads_publish_packets_into_the_fields_the_fast_path_reads() -> None:
    client = FastClient(CallbackAPIVersion.VERSION2)
    assert {"command", "packet"} <= set(client._in_packet)
    assert mqtt.MQTTMessage(topic=b"t")._topic == b"t"


@FAST_PATH
def test_both_paths_hand_paho_the_same_pubacks_in_arrival_order(fast_path: bool) -> None:
    async def go() -> None:
        settings = load_settings(None, mqtt_fast_path=fast_path)
        ingest = MqttIngest(settings.mqtt_config(), Inbox(asyncio.get_running_loop(), 10))
        written: list[bytes] = []

        def packet_queue(command: int, packet: bytes | bytearray, mid: int, qos: int,
                         info: mqtt.MQTTMessageInfo | None = None) -> MQTTErrorCode:
            assert command == mqtt.PUBACK
            written.append(bytes(packet))
            return MQTTErrorCode.MQTT_ERR_SUCCESS

        ingest._client._packet_queue = packet_queue  # type: ignore[method-assign]
        ingest._generation = 2
        arrived = [(5, 1, 2), (3, 1, 2), (0, 0, 2), (7, 1, 1), (9, 1, 2)]  # mid, qos, generation
        batch = [InboundMessage("fleet/d/telemetry", b"x", mid, qos, generation, 0)
                 for mid, qos, generation in arrived]
        assert ingest.ack(batch) == 3  # QoS 0 has no ack; 7 came on an earlier connection
        assert b"".join(written) == b"".join(bytes((0x40, 2, 0, mid)) for mid in (5, 3, 9))

    asyncio.run(go())


def _props() -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    props.PayloadFormatIndicator = 0
    props.MessageExpiryInterval = 3600
    props.ContentType = "application/msgpack"
    props.ResponseTopic = "fleet/reply"
    props.CorrelationData = b"\x00\x01"
    props.UserProperty = [("firmware", "1.2.3"), ("site", "north")]
    return props


# (topic, payload, qos, with MQTT 5 properties), published in this order on one connection
SENT = [
    ("fleet/dev-1/telemetry", b"plain", 1, False),
    ("fleet/dev-2/telemetry", b"with properties", 1, True),
    ("fleet/dev-3/birth", b"", 1, False),
    ("fleet/dev-4/telemetry", bytes(range(256)) * 400, 1, False),  # 3-byte remaining length
    ("fleet/dev-5/death", b"at most once", 0, False),
    ("fleet/d\u00ebv-6/telemetry", b"utf-8 topic", 1, True),
]


class _Broker(Protocol):  # the mosquitto fixture (tests/conftest.py)
    @property
    def url(self) -> str: ...


class _Session:
    """One MqttIngest on a real broker, with the test's probe publisher beside it."""

    def __init__(self, url: str, fast_path: bool) -> None:
        self.config = load_settings(None, mqtt_url=url, mqtt_fast_path=fast_path,
                                    gateway_id="ingest-test").mqtt_config()
        self.publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="ingest-test-pub",
                                     protocol=mqtt.MQTTv5)
        self.publisher.connect(self.config.host, self.config.port)
        self.publisher.loop_start()
        self.probes = 0

    async def connect(self) -> tuple[MqttIngest, Inbox]:
        loop = asyncio.get_running_loop()
        up = asyncio.Event()
        inbox = Inbox(loop, 1000)

        def on_connection_change(connected: bool) -> None:  # on paho's thread
            if connected:
                loop.call_soon_threadsafe(up.set)

        ingest = MqttIngest(self.config, inbox, on_connection_change)
        ingest.start()
        await asyncio.wait_for(up.wait(), 10)
        return ingest, inbox

    def publish(self, topic: str, payload: bytes, qos: int,
                props: Properties | None = None) -> None:
        self.publisher.publish(topic, payload, qos, properties=props).wait_for_publish(10)

    async def until_probe(self, inbox: Inbox) -> list[InboundMessage]:
        """Publish probes until one comes back (the subscription is live, and everything the
        broker queued for the session came before it): what arrived, probes left out."""
        got: list[InboundMessage] = []
        deadline = asyncio.get_running_loop().time() + 10
        while asyncio.get_running_loop().time() < deadline:
            self.probes += 1
            await asyncio.to_thread(self.publish, f"fleet/probe-{self.probes}/death", b"", 1)
            try:
                got += await asyncio.wait_for(inbox.get_batch(1000, 0.2), 0.5)
            except TimeoutError:
                continue
            if any(m.topic == f"fleet/probe-{self.probes}/death" for m in got):
                return [m for m in got if not m.topic.startswith("fleet/probe-")]
        raise TimeoutError("no probe came back from the broker")

    def close(self) -> None:
        self.publisher.disconnect()
        self.publisher.loop_stop()


@FAST_PATH
def test_both_receive_paths_give_the_same_messages_and_acks_against_mosquitto(
        fast_path: bool, mosquitto: _Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[bytes] = []  # topics the fast path's own parser split (none with it off)

    def split_publish(body: bytes | bytearray, qos: int) -> tuple[bytes, bytes, int]:
        split = parser.split_publish(body, qos)
        parsed.append(split[0])
        return split

    monkeypatch.setattr("gateway.ingest.fastpath.split_publish", split_publish)
    session = _Session(mosquitto.url, fast_path)

    async def go() -> None:
        ingest, inbox = await session.connect()
        assert await session.until_probe(inbox) == []
        for topic, payload, qos, with_props in SENT:
            await asyncio.to_thread(session.publish, topic, payload, qos,
                                    _props() if with_props else None)
        received = await session.until_probe(inbox)
        assert [(m.topic, m.payload, m.qos) for m in received] == [s[:3] for s in SENT]
        assert all(m.generation == 1 for m in received)
        mids = [m.mid for m in received if m.qos == 1]
        assert 0 not in mids and len(set(mids)) == len(mids)
        assert [m.mid for m in received if m.qos == 0] == [0]
        ingest.ack(received[:3])  # committed: the rest stays unacked at the broker
        await ingest.stop()

        ingest, inbox = await session.connect()
        redelivered = await session.until_probe(inbox)
        assert [(m.topic, m.payload) for m in redelivered] == [
            (topic, payload) for topic, payload, qos, _ in SENT[3:] if qos == 1]
        await ingest.stop()

    try:
        asyncio.run(go())
    finally:
        session.close()
    assert {topic.encode() for topic, *_ in SENT} <= set(parsed) if fast_path else not parsed
