"""MQTT ingest: the one adapter around paho-mqtt.

paho runs on its own network thread and never touches asyncio state. For each message it only
appends (topic, payload, packet id) to the Inbox (a deque) and, when the consumer waits for that
many, schedules one wake-up with `loop.call_soon_threadsafe`. Nothing is decoded, stored or
acknowledged there. `_Client` trims paho's per-message work (buffered reads, every buffered
packet per wake-up, a lean QoS 0/1 PUBLISH parser); see docs/architecture.md for the figures.

Acknowledgement is manual: the pipeline calls `ack()` after the frames' SQLite transaction has
committed. Messages received on an earlier connection are never acked on a later one (their packet
ids belong to the old connection); the broker redelivers them and dedup absorbs the copy.

Backpressure: the Inbox holds at most `max_in_hand` unacked messages; when full, paho's thread
waits in on_message, stops reading the socket, and the broker's inflight window holds the rest.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import paho.mqtt.client as mqtt
from paho.mqtt.client import PUBACK
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device_protocol import GatewayState, device_subscriptions, encode_gateway_state
from device_protocol import gateway_state_topic as state_topic_for
from gateway.settings import MqttConfig

log = logging.getLogger(__name__)


class InboundMessage(NamedTuple):
    topic: str
    payload: bytes
    mid: int
    qos: int
    generation: int  # connection number it arrived on
    received_ms: int


class Inbox:
    """Bounded hand-off from paho's thread to the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_in_hand: int) -> None:
        self._loop = loop
        self._items: deque[InboundMessage] = deque()
        self._slots = threading.Semaphore(max_in_hand)
        self._event = asyncio.Event()
        self._wake_pending = False
        # How many queued items the consumer waits for; 0 while it is busy. The producer wakes
        # the loop only when that many are there: one wake-up per batch, not per message.
        self._wanted = 0
        self._closed = False

    # --- paho thread
    def put(self, item: InboundMessage) -> bool:
        """Queue item; block while max_in_hand messages are unacked. False once closed."""
        while not self._slots.acquire(timeout=0.5):
            if self._closed:
                return False
        if self._closed:
            self._slots.release()
            return False
        self._items.append(item)
        # Append first, read _wanted second (the consumer sets it, then re-checks the deque):
        # either we see it waiting or it sees our item. The GIL orders the two.
        wanted = self._wanted
        if wanted and len(self._items) >= wanted and not self._wake_pending:
            self._wake_pending = True
            self._loop.call_soon_threadsafe(self._wake)
        return True

    # --- event loop
    def _wake(self) -> None:
        self._wake_pending = False
        self._event.set()

    async def get_batch(self, max_items: int, max_delay_s: float) -> list[InboundMessage]:
        """Wait for at least one message, then up to max_delay_s for max_items of them."""
        items = self._items
        try:
            while not items:
                if self._closed:
                    return []
                self._event.clear()
                self._wanted = 1
                if items:
                    break
                await self._event.wait()
            if len(items) < max_items and max_delay_s > 0 and not self._closed:
                deadline = self._loop.time() + max_delay_s
                while len(items) < max_items:
                    remaining = deadline - self._loop.time()
                    if remaining <= 0:
                        break
                    self._event.clear()
                    self._wanted = max_items
                    if len(items) >= max_items:
                        break
                    try:
                        await asyncio.wait_for(self._event.wait(), remaining)
                    except TimeoutError:
                        break
        finally:
            self._wanted = 0
        count = min(max_items, len(items))
        return [items.popleft() for _ in range(count)]

    def release(self, count: int) -> None:
        """Free the slots of messages that are acked (or will be redelivered)."""
        if count:
            self._slots.release(count)

    def __len__(self) -> int:
        return len(self._items)

    def close(self) -> None:
        """Event loop side: refuse further messages (they stay at the broker) and wake get_batch."""
        self._closed = True
        self._event.set()


_PUBACK = bytes((PUBACK, 2))  # MQTT 5 PUBACK, short form: reason "success" implied
_READ_CHUNK = 65536


class _BufferedSocket:
    """A plain TCP socket whose recv() serves paho's many small reads from one large read.

    paho reads every packet in several recv() calls (header byte, length bytes, body): four
    system calls per telemetry frame, about a fifth of the gateway's CPU. pending() is the hook
    paho already has for TLS sockets: while it is non-zero paho's select() does not wait, so no
    buffered byte is ever left unread. Everything else is the socket's own.
    """

    __slots__ = ("_buf", "_pos", "_sock")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, bufsize: int) -> bytes:
        if self._pos >= len(self._buf):
            data = self._sock.recv(max(bufsize, _READ_CHUNK))  # BlockingIOError, b"" at EOF
            if len(data) <= bufsize:
                return data
            self._buf, self._pos = data, 0
        start = self._pos
        self._pos = min(start + bufsize, len(self._buf))
        return self._buf[start:self._pos]

    def pending(self) -> int:
        return len(self._buf) - self._pos

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _split_publish(packet: bytes | bytearray, qos: int) -> tuple[bytes, bytes, int] | None:
    """(topic, payload, packet id) of an MQTT 5 PUBLISH body, or None if it does not parse."""
    size = len(packet)
    if size < 3:
        return None
    end = 2 + ((packet[0] << 8) | packet[1])
    if end == 2:  # an empty topic means a topic alias (a property): leave it to paho
        return None
    mid = 0
    if qos:
        if end + 2 > size:
            return None
        mid = (packet[end] << 8) | packet[end + 1]
        pos = end + 2
    else:
        pos = end
    # property length: a variable byte integer (1-4 bytes), then the properties themselves
    props = shift = 0
    for _ in range(4):
        if pos >= size:
            return None
        byte = packet[pos]
        pos += 1
        props |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
    else:
        return None
    pos += props
    if end > size or pos > size:
        return None
    return bytes(packet[2:end]), bytes(packet[pos:]), mid


class _Client(mqtt.Client):
    """paho's client, cheaper per message: buffered reads on plain TCP (TLS sockets buffer by
    themselves), every buffered packet handled per wake-up, and QoS 0/1 PUBLISH handed straight
    to the adapter (fleetgate registers no per-topic callbacks and reads no publish properties).
    The hooks are private paho methods: tests/unit/test_ingest.py pins their signatures."""

    # Receives (topic, payload, packet id, qos) of every message; set by MqttIngest.
    deliver_raw: Callable[[bytes, bytes, int, int], None] | None = None
    _buffered: _BufferedSocket | None = None

    def _create_socket(self) -> Any:
        sock = super()._create_socket()
        if type(sock) is socket.socket:
            self._buffered = _BufferedSocket(sock)
            return self._buffered
        return sock

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Read every packet already buffered, not one per select() as paho does: one
        system call per 64 KiB read instead of one per message."""
        rc = super().loop_read(max_packets)
        buffered = self._buffered
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and buffered is not None \
                and buffered.pending() > 0 and self._buffered is buffered:
            rc = super().loop_read(1)
        return rc

    def _handle_on_message(self, message: mqtt.MQTTMessage) -> None:
        # Messages paho decoded itself (QoS 2, or a PUBLISH the lean parser left to it).
        deliver = self.deliver_raw
        if deliver is None:
            super()._handle_on_message(message)
        else:
            deliver(message._topic, cast(bytes, message.payload), message.mid, message.qos)

    def _handle_publish(self) -> MQTTErrorCode:
        """QoS 0/1 PUBLISH straight to deliver_raw(topic, payload, mid, qos).

        paho builds an MQTTMessage and parses the MQTT 5 properties of every PUBLISH (a
        Properties object per message: about a tenth of the gateway's CPU). The gateway reads
        no publish properties, so this skips them. Anything unusual (QoS 2, a packet whose
        lengths do not add up) goes to paho's own handler, which raises its proper errors.
        """
        deliver = self.deliver_raw
        command = self._in_packet["command"]
        qos = (command & 0x06) >> 1
        packet = self._in_packet["packet"]
        parsed = _split_publish(packet, qos) if deliver is not None and qos < 2 else None
        if deliver is None or parsed is None:
            return super()._handle_publish()
        topic, payload, mid = parsed
        deliver(topic, payload, mid, qos)
        return MQTTErrorCode.MQTT_ERR_SUCCESS


class MqttIngest:
    def __init__(self, config: MqttConfig, inbox: Inbox,
                 on_connection_change: Callable[[bool], None] | None = None) -> None:
        self._config = config
        self._inbox = inbox
        self._on_connection_change = on_connection_change
        self._generation = 0
        self.connected = False
        self._stopping = False
        self._failures = 0
        self._state_topic = state_topic_for(config.topic_prefix, config.gateway_id)
        client = _Client(
            CallbackAPIVersion.VERSION2, client_id=config.client_id,
            protocol=MQTTProtocolVersion.MQTTv5, manual_ack=True)
        if config.username:
            client.username_pw_set(config.username, config.password)
        client.will_set(self._state_topic, self._state_payload(False), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.deliver_raw = self._deliver_raw
        client.max_inflight_messages_set(1000)  # our own publishes (state, rebirth commands)
        self._client = client
        self._client_delay = 0.0
        self._next_reconnect_delay()
        # paho offers no batched acknowledgement; its packet queue (what client.ack() uses) takes
        # one write of many PUBACKs. Checked at start-up and by tests/unit/test_ingest.py.
        self._queue_packet: Callable[..., object] | None = getattr(client, "_packet_queue", None)

    # --- lifecycle (event loop side)
    def start(self) -> None:
        config = self._config
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = config.session_expiry_s
        properties.ReceiveMaximum = config.receive_maximum
        self._client.connect_async(config.host, config.port, config.keepalive_s,
                                   clean_start=False, properties=properties)
        self._client.loop_start()  # paho's own network thread; it reconnects by itself

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Say offline, disconnect (the session and unacked messages stay at the broker)."""
        self._stopping = True
        self._inbox.close()
        if self.connected:
            info = self._client.publish(self._state_topic, self._state_payload(False), qos=1,
                                        retain=True)
            await asyncio.to_thread(info.wait_for_publish, min(timeout_s, 2.0))
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)
        self._set_connected(False)

    def ack(self, messages: list[InboundMessage]) -> int:
        """PUBACK messages (in arrival order) that came on the current connection."""
        generation = self._generation
        mids = [m.mid for m in messages if m.qos == 1 and m.generation == generation]
        if mids:
            if self._queue_packet is not None:
                self._queue_packet(PUBACK, b"".join(
                    _PUBACK + mid.to_bytes(2, "big") for mid in mids), 0, 0)
            else:
                for mid in mids:
                    self._client.ack(mid, 1)
        self._inbox.release(len(messages))
        return len(mids)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self._client.publish(topic, payload, qos=qos, retain=retain)

    # --- paho thread
    def _next_reconnect_delay(self) -> None:
        # Full jitter over an exponential ceiling: gateways (or one restarting repeatedly)
        # never retry in lockstep. paho waits reconnect_delay_set's min_delay before the next try.
        config = self._config
        ceiling = min(config.reconnect_max_s, config.reconnect_min_s * 2 ** self._failures)
        delay = random.uniform(config.reconnect_min_s / 2, ceiling)
        self._client_delay = delay
        self._client.reconnect_delay_set(delay, delay)  # type: ignore[arg-type]

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any) -> None:
        if reason_code.is_failure:
            log.error("MQTT broker refused the connection: %s", reason_code)
            return
        self._generation += 1
        self._failures = 0
        self._next_reconnect_delay()
        log.info("MQTT connected to %s:%s (session present: %s)", self._config.host,
                 self._config.port, flags.session_present)
        client.subscribe([(topic, 1) for topic in device_subscriptions(self._config.topic_prefix)])
        client.publish(self._state_topic, self._state_payload(True), qos=1, retain=True)
        self._set_connected(True)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._failures += 1
        self._next_reconnect_delay()
        log.warning("MQTT connect to %s:%s failed; retrying in %.1f s", self._config.host,
                    self._config.port, self._client_delay)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        self._set_connected(False)
        if self._stopping:
            return
        self._failures += 1
        self._next_reconnect_delay()
        log.warning("MQTT disconnected (%s); reconnecting in %.1f s", reason_code,
                    self._client_delay)

    def _deliver_raw(self, topic: bytes, payload: bytes, mid: int, qos: int) -> None:
        try:
            text = topic.decode()
        except UnicodeDecodeError:  # the pipeline quarantines it (it is no valid topic)
            text = topic.decode("utf-8", "replace")
        self._inbox.put(InboundMessage(text, payload, mid, qos, self._generation,
                                       int(time.time() * 1000)))

    def _set_connected(self, connected: bool) -> None:
        if connected != self.connected:
            self.connected = connected
            if self._on_connection_change is not None:
                self._on_connection_change(connected)

    @staticmethod
    def _state_payload(online: bool) -> bytes:
        return encode_gateway_state(GatewayState(online=online, time_ms=int(time.time() * 1000)))
