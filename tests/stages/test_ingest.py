"""The paho adapter's pure parts: the Inbox hand-off, reconnect jitter, the ack hook."""

from __future__ import annotations

import asyncio
import inspect
import threading

import paho.mqtt.client as mqtt

from gateway.ingest.mqtt import InboundMessage, Inbox, MqttIngest
from gateway.settings import load_settings


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


def test_reconnect_delays_are_jittered_under_an_exponential_ceiling() -> None:
    async def go() -> None:
        settings = load_settings(None, mqtt_reconnect_min_s=1.0, mqtt_reconnect_max_s=8.0)
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
    # gateway/ingest/mqtt.py writes one PUBACK run per group commit through paho's packet queue,
    # the same call client.ack() makes. An upgrade that changes it must fail here, loudly.
    params = list(inspect.signature(mqtt.Client._packet_queue).parameters)
    assert params[:5] == ["self", "command", "packet", "mid", "qos"]
    assert mqtt.PUBACK == 0x40


def test_buffered_socket_serves_small_reads_from_one_large_read() -> None:
    import socket

    from gateway.ingest.mqtt import _BufferedSocket

    a, b = socket.socketpair()
    try:
        b.sendall(b"\x30\x05hello" + b"\x30\x03abc")
        buffered = _BufferedSocket(a)
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
    import socket

    from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

    from gateway.ingest.mqtt import _BufferedSocket, _Client

    client = _Client(CallbackAPIVersion.VERSION2)
    a, b = socket.socketpair()
    try:
        buffered = _BufferedSocket(a)
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


def test_split_publish_reads_topic_mid_and_payload_past_mqtt5_properties() -> None:
    from hypothesis import given
    from hypothesis import strategies as st

    from gateway.ingest.mqtt import _split_publish

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)

    assert _split_publish(b"\x00\x00\x00\x05\x00hi", 1) is None  # topic alias: paho's job

    @given(st.binary(min_size=1, max_size=300), st.binary(max_size=500), st.integers(0, 65535),
           st.sampled_from([0, 1]), st.binary(max_size=200))
    def check(topic: bytes, payload: bytes, mid: int, qos: int, props: bytes) -> None:
        body = len(topic).to_bytes(2, "big") + topic
        if qos:
            body += mid.to_bytes(2, "big")
        body += varint(len(props)) + props + payload
        assert _split_publish(bytearray(body), qos) == (topic, payload, mid if qos else 0)
        # truncated bodies never parse into something wrong: None (paho's handler decides)
        for cut in range(len(body) - len(payload)):
            assert _split_publish(body[:cut], qos) is None

    check()


def test_paho_still_routes_publish_packets_through_the_overridden_handler() -> None:
    assert list(inspect.signature(mqtt.Client._handle_publish).parameters) == ["self"]


def test_messages_paho_decodes_itself_reach_the_same_hand_off() -> None:
    from paho.mqtt.enums import CallbackAPIVersion

    from gateway.ingest.mqtt import _Client

    client = _Client(CallbackAPIVersion.VERSION2)
    seen: list[tuple[bytes, bytes, int, int]] = []
    client.deliver_raw = lambda *args: seen.append(args)
    message = mqtt.MQTTMessage(mid=5, topic=b"fleet/dev-1/telemetry")
    message.payload, message.qos = b"frame", 2
    client._handle_on_message(message)
    assert seen == [(b"fleet/dev-1/telemetry", b"frame", 5, 2)]
