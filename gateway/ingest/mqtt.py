"""MQTT ingest: the paho adapter, `MqttIngest` (session, reconnects, manual acks, publishing).

paho runs on its own network thread and never touches asyncio state. For each message it only
appends an InboundMessage to the Inbox (inbox.py); nothing is decoded, stored or acknowledged
there. Two receive paths give the same InboundMessage values and the same acks:
- `mqtt_fast_path = true` (default): `fastpath.FastClient`, paho with its per-message work
  trimmed through private hooks (buffered reads, the lean PUBLISH parser, one PUBACK write per
  group commit): the gateway went from ~150 to ~65 µs of CPU per frame, see fastpath.py;
- `mqtt_fast_path = false`: stock `paho.mqtt.client.Client` and its public on_message callback
  and ack(), so a paho upgrade can be tried with the setting off.
Both run over plain TCP (mqtt://) or TLS (mqtts://, the context from tls.py: the broker's
certificate and name always verified).

Acknowledgement is manual: the pipeline calls `ack()` after the frames' SQLite transaction has
committed, and PUBACKs go out in arrival order. Messages received on an earlier connection are
never acked on a later one (their packet ids belong to the old connection); the broker redelivers
them and dedup absorbs the copy.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device_protocol import GatewayState, device_subscriptions, encode_gateway_state
from device_protocol import gateway_state_topic as state_topic_for
from gateway.ingest.fastpath import FastClient
from gateway.ingest.inbox import InboundMessage, Inbox
from gateway.ingest.tls import client_context
from gateway.settings import MqttConfig

log = logging.getLogger(__name__)


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
        client: mqtt.Client
        self._fast_client: FastClient | None = None
        if config.fast_path:
            fast = FastClient(CallbackAPIVersion.VERSION2, client_id=config.client_id,
                              protocol=MQTTProtocolVersion.MQTTv5, manual_ack=True)
            fast.deliver_raw = self._deliver_raw
            client = self._fast_client = fast
        else:
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=config.client_id,
                                 protocol=MQTTProtocolVersion.MQTTv5, manual_ack=True)
            client.on_message = self._on_message
        if config.tls is not None:  # mqtts://: files checked now (ConfigError), not at connect
            client.tls_set_context(client_context(config.tls))
        if config.username:
            client.username_pw_set(config.username, config.password)
        client.will_set(self._state_topic, self._state_payload(False), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.max_inflight_messages_set(1000)  # our own publishes (state, rebirth commands)
        self._client = client
        self._client_delay = 0.0
        self._next_reconnect_delay()

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
            if self._fast_client is not None:
                self._fast_client.queue_pubacks(mids)  # one write for the whole group
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

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        """Stock paho's callback (mqtt_fast_path off): the same InboundMessage as the fast path."""
        try:
            topic = message.topic
        except UnicodeDecodeError:  # paho keeps the raw bytes only in a private attribute
            topic = _topic_text(getattr(message, "_topic", b""))
        self._inbox.put(InboundMessage(topic, bytes(message.payload), message.mid, message.qos,
                                       self._generation, int(time.time() * 1000)))

    def _deliver_raw(self, topic: bytes, payload: bytes, mid: int, qos: int) -> None:
        """The fast path's hand-off, on paho's thread (once per message: no extra call)."""
        try:
            text = topic.decode()
        except UnicodeDecodeError:
            text = _topic_text(topic)
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


def _topic_text(topic: bytes) -> str:
    try:
        return topic.decode()
    except UnicodeDecodeError:  # the pipeline quarantines it (it is no valid topic)
        return topic.decode("utf-8", "replace")
