"""MQTT ingest: the one adapter around paho-mqtt.

paho runs on its own network thread and never touches asyncio state. Its on_message callback only
appends the raw message to the Inbox (a deque) and, when the consumer may be asleep, schedules one
wake-up with `loop.call_soon_threadsafe`. Nothing is decoded, stored or acknowledged there.

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
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
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
        if not self._wake_pending:
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
        while not items:
            if self._closed:
                return []
            self._event.clear()
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
                try:
                    await asyncio.wait_for(self._event.wait(), remaining)
                except TimeoutError:
                    break
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


class MqttIngest:
    def __init__(self, config: MqttConfig, inbox: Inbox,
                 on_connection_change: Callable[[bool], None] | None = None) -> None:
        self._config = config
        self._inbox = inbox
        self._on_connection_change = on_connection_change
        self._generation = 0
        self.connected = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state_topic = state_topic_for(config.topic_prefix, config.gateway_id)
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=config.client_id,
            protocol=MQTTProtocolVersion.MQTTv5, manual_ack=True)
        if config.username:
            client.username_pw_set(config.username, config.password)
        client.will_set(self._state_topic, self._state_payload(False), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.max_inflight_messages_set(1000)  # our own publishes (state, rebirth commands)
        self._client = client

    # --- lifecycle (event loop side)
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mqtt-ingest", daemon=True)
        self._thread.start()

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Say offline, disconnect (the session and unacked messages stay at the broker)."""
        self._inbox.close()
        if self.connected:
            info = self._client.publish(self._state_topic, self._state_payload(False), qos=1,
                                        retain=True)
            await asyncio.to_thread(info.wait_for_publish, min(timeout_s, 2.0))
        self._stop.set()
        self._client.disconnect()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, timeout_s)

    def ack(self, messages: list[InboundMessage]) -> int:
        """PUBACK messages (in arrival order) that came on the current connection."""
        generation = self._generation
        client = self._client
        acked = 0
        for message in messages:
            if message.qos and message.generation == generation:
                client.ack(message.mid, message.qos)
                acked += 1
        self._inbox.release(len(messages))
        return acked

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self._client.publish(topic, payload, qos=qos, retain=retain)

    # --- paho thread
    def _run(self) -> None:
        config = self._config
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = config.session_expiry_s
        properties.ReceiveMaximum = config.receive_maximum
        delay = config.reconnect_min_s
        first = True
        while not self._stop.is_set():
            try:
                if first:
                    self._client.connect(config.host, config.port, config.keepalive_s,
                                         clean_start=False, properties=properties)
                    first = False
                else:
                    self._client.reconnect()
            except OSError as exc:
                log.warning("MQTT connect to %s:%s failed: %s", config.host, config.port, exc)
            else:
                while not self._stop.is_set():
                    rc = self._client.loop(timeout=0.5)
                    if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                        break
                if self.connected:
                    delay = config.reconnect_min_s
            if self._stop.is_set():
                break
            # Full jitter: many gateways (or one restarting repeatedly) never retry in lockstep.
            self._stop.wait(random.uniform(0, delay))
            delay = min(delay * 2, config.reconnect_max_s)
        self._set_connected(False)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any) -> None:
        if reason_code.is_failure:
            log.error("MQTT broker refused the connection: %s", reason_code)
            return
        self._generation += 1
        log.info("MQTT connected to %s:%s (session present: %s)", self._config.host,
                 self._config.port, flags.session_present)
        client.subscribe([(topic, 1) for topic in device_subscriptions(self._config.topic_prefix)])
        client.publish(self._state_topic, self._state_payload(True), qos=1, retain=True)
        self._set_connected(True)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        if not self._stop.is_set():
            log.warning("MQTT disconnected: %s", reason_code)
        self._set_connected(False)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._inbox.put(InboundMessage(message.topic, message.payload, message.mid, message.qos,
                                       self._generation, int(time.time() * 1000)))

    def _set_connected(self, connected: bool) -> None:
        if connected != self.connected:
            self.connected = connected
            if self._on_connection_change is not None:
                self._on_connection_change(connected)

    @staticmethod
    def _state_payload(online: bool) -> bytes:
        return encode_gateway_state(GatewayState(online=online, time_ms=int(time.time() * 1000)))
