"""One simulated device on the wire: its paho client, its callbacks, its frame schedule and faults.

A `DeviceLink` runs only on the fleet's thread (see `firmware_sim.fleet`): paho's callbacks are
called from the fleet's socket loop, and every timer goes through `Fleet.at`, so nothing here
needs a lock. It publishes live frames while online, buffers them in the device's ring while
offline, replays the ring at the pace PUBACKs come back, and plays the network faults (`cut`,
`flap`, `reboot`). What to publish and when to replay is the device core's (fleetgate_device),
the code the Python SDK runs: the link hands it the client's events and publishes its answers.

Over TLS each device's client has its own SSLContext (its own certificate) from the config.
"""

from __future__ import annotations

import random
import socket
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from firmware_sim.device import SimDevice
from firmware_sim.fleet_summary import DeviceStats
from fleetgate_device.core import Publish

if TYPE_CHECKING:
    from firmware_sim.fleet import Fleet

_CONNECT_TIMEOUT_S = 2.0  # a blocking TCP connect; a black-holed broker costs this per try
_RECONNECT_MIN_S, _RECONNECT_MAX_S = 1.0, 10.0


@dataclass(slots=True)
class _Pending:
    publish: Publish
    copy: bool = False  # a deliberate duplicate: its PUBACK is not a new frame


class _Client(mqtt.Client):
    """paho's client, read until its TLS layer holds nothing more.

    `loop_read` stops after a few MQTT packets. On a plain socket the rest stays in the kernel
    and the next epoll turn reports it; over TLS, the rest of a record already decrypted sits in
    the SSL object, invisible to epoll, and would wait for the broker's next bytes (a PUBACK, a
    retained gateway state could stall for a keepalive period or for ever)."""

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        rc = super().loop_read(max_packets)
        sock = self.socket()
        while rc == mqtt.MQTT_ERR_SUCCESS and isinstance(sock, ssl.SSLSocket) and sock.pending():
            rc = super().loop_read(max_packets)
            sock = self.socket()
        return rc


class DeviceLink:
    """One device, its MQTT client and its schedule. Runs only on the fleet's thread."""

    def __init__(self, fleet: Fleet, device: SimDevice, rng: random.Random) -> None:
        self.fleet = fleet
        self.device = device
        self.rng = rng  # link-level randomness (faults, back-off), apart from the device's
        self.core = device.core
        self.connected = False
        self.ever_connected = False
        self.started = False  # producing frames on its cadence
        self.births = 0
        self.refused = 0  # telemetry the broker answered with a failure PUBACK
        self.duplicates = 0
        self.malformed = 0
        self.lost_in_flight = 0  # awaiting a PUBACK when the device rebooted
        self.produced = 0
        self.pending: dict[int, _Pending] = {}  # by MQTT message id, until its PUBACK
        self.pending_frames = 0  # of which real frames (not deliberate copies); read by stats()
        self.death_mid: int | None = None
        self.death_acked = False
        self.down_until = 0.0  # a network outage (fault `flap`) or a reboot in progress
        self.connecting = False  # a reconnect is scheduled
        self.backoff_s = _RECONNECT_MIN_S
        self.next_due = 0.0  # of the next frame, on the monotonic clock
        # Fault knobs, set by the fleet from the config.
        self.duplicate_share = 0.0
        self.malformed_rate = 0.0
        # Built once, kept across reboots: a device's identity outlives its connections.
        self.tls_context = fleet.tls_context(device.device_id)
        self.client = self._make_client()

    # --- the client -------------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        client = _Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.device.device_id,
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        client.connect_timeout = _CONNECT_TIMEOUT_S
        will = self.core.death()
        client.will_set(will.topic, will.payload, qos=1)
        broker = self.fleet.broker
        password = self.fleet.passwords.get(self.device.device_id)
        if password is not None:
            client.username_pw_set(self.device.device_id, password)
        elif broker.username is not None:
            client.username_pw_set(broker.username, broker.password)
        if self.tls_context is not None:
            client.tls_set_context(self.tls_context)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        loop = self.fleet.io
        client.on_socket_open = lambda _c, _u, sock: loop.watch(sock, self)
        client.on_socket_close = lambda _c, _u, sock: loop.unwatch(sock)
        client.on_socket_register_write = lambda _c, _u, sock: loop.want_write(sock, self, True)
        client.on_socket_unregister_write = lambda _c, _u, sock: loop.want_write(sock, self, False)
        # connect_async only records where to connect; reconnect() below does it.
        client.connect_async(broker.host, broker.port, keepalive=self.fleet.config.keepalive_s)
        return client

    def try_connect(self) -> None:
        self.connecting = False
        if self.fleet.stopping or self.connected or self.client.socket() is not None:
            return
        now = time.monotonic()
        if now < self.down_until:
            self.schedule_connect(self.down_until - now)
            return
        try:
            self.client.reconnect()  # CONNECT is sent; the CONNACK arrives through the loop
        except (OSError, TimeoutError):
            self.schedule_connect(self.backoff_s * self.rng.uniform(0.8, 1.2))
            self.backoff_s = min(_RECONNECT_MAX_S, self.backoff_s * 2)

    def schedule_connect(self, delay_s: float) -> None:
        if not self.connecting:
            self.connecting = True
            self.fleet.at(time.monotonic() + delay_s, self.try_connect)

    def cut(self) -> None:
        """Drop the TCP connection without DISCONNECT, as a pulled cable or a dead device does:
        the broker notices the EOF and publishes the Will."""
        sock = self.client.socket()
        if isinstance(sock, socket.socket):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            # paho reads the EOF, closes the socket and calls on_disconnect.
            self.client.loop_read()

    # --- paho callbacks (on the fleet's thread) ----------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: mqtt.ConnectFlags,
                    reason: ReasonCode, _p: Properties | None) -> None:
        if reason.is_failure:
            return
        self.backoff_s = _RECONNECT_MIN_S
        client.subscribe([(topic, 1) for topic in self.core.subscriptions])
        self.connected = True
        self.ever_connected = True
        self.send(self.core.on_connect(_wall_ms() + self.device.clock_skew_ms))
        if not self.started:
            self.start()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: mqtt.DisconnectFlags,
                       _r: ReasonCode, _p: Properties | None) -> None:
        self.connected = False
        self.core.on_disconnect()
        if not self.fleet.stopping:
            self.schedule_connect(max(self.down_until - time.monotonic(), 0.0)
                                  + self.backoff_s * self.rng.uniform(0.5, 1.0))

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        self.send(self.core.on_message(message.topic, bytes(message.payload),
                                       _wall_ms() + self.device.clock_skew_ms,
                                       retained=bool(message.retain)))

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, reason: ReasonCode,
                    _p: Properties | None) -> None:
        if mid == self.death_mid:
            self.death_acked = not reason.is_failure
        sent = self.pending.pop(mid, None)
        if sent is None or sent.copy:
            return  # a birth, a malformed payload or a deliberate duplicate
        self.pending_frames -= 1
        key = sent.publish.frame
        if reason.is_failure:
            self.refused += 1
        elif key is not None:
            self.fleet.ledger.record(self.device.device_id, key.boot, key.seq,
                                     historical=key.historical)
        self.send(self.core.on_ack(sent.publish, not reason.is_failure))

    def send(self, publishes: list[Publish]) -> None:
        """Publish what the core asks for, in order. If the connection dropped since the core
        last heard of it, paho keeps the message and sends it after reconnecting; the PUBACK
        still lands in the ledger."""
        for pub in publishes:
            info = self.client.publish(pub.topic, pub.payload, qos=pub.qos, retain=pub.retain)
            if pub.frame is not None:
                self.pending[info.mid] = _Pending(pub)
                self.pending_frames += 1
            elif pub.topic == self.core.topics.birth:
                self.births += 1

    # --- schedule ---------------------------------------------------------------------------

    @property
    def online(self) -> bool:
        return self.core.online

    def producing(self) -> bool:
        return self.fleet.config.frames is None or self.produced < self.fleet.config.frames

    def start(self, first_delay_s: float | None = None) -> None:
        """Begin the cadence: the first frame within one interval (jittered, so the fleet does
        not publish in lock-step)."""
        self.started = True
        interval = self.fleet.config.interval_s
        delay = self.rng.uniform(0.0, interval) if first_delay_s is None else first_delay_s
        self.next_due = time.monotonic() + delay
        self.fleet.at(self.next_due, self.produce)

    def start_unless_started(self) -> None:
        if not self.started:
            self.start()

    def produce(self) -> None:
        if not self.producing() or self.fleet.stopping:
            return
        now = time.monotonic()
        out = self.device.telemetry(_wall_ms())
        self.produced += 1
        self.send(out)
        live = [p for p in out if p.frame is not None and not p.frame.historical]
        if live:
            if self.duplicate_share and self.rng.random() < self.duplicate_share:
                self.publish_copy(live[0])
            if self.malformed_rate and self.rng.random() < self.malformed_rate:
                self.client.publish(self.core.topics.telemetry, self.device.malformed_payload(),
                                    qos=1)
                self.malformed += 1
        self.fleet.after_frame(self)
        if self.producing():
            # Keep the cadence: a timer that fired late does not delay the next frame. After a
            # stall longer than an interval the next frame goes at once: one, not a burst.
            self.next_due = max(self.next_due + self.fleet.config.interval_s, now)
            self.fleet.at(self.next_due, self.produce)

    def publish_copy(self, pub: Publish) -> None:
        """The same frame again, as a QoS 1 redelivery looks: the gateway must drop it."""
        info = self.client.publish(pub.topic, pub.payload, qos=1)
        self.pending[info.mid] = _Pending(pub, copy=True)
        self.duplicates += 1

    # --- faults -----------------------------------------------------------------------------

    def reboot(self) -> None:
        """Power cycle: the connection dies (the broker sends the Will), RAM is lost (the ring
        and whatever awaited a PUBACK), a new boot comes up with seq 0 and a new birth."""
        self.cut()
        self.lost_in_flight += self.pending_frames
        self.pending.clear()
        self.pending_frames = 0
        self.device.reboot()
        self.connected = False
        self.connecting = False
        self.down_until = time.monotonic() + self.rng.uniform(1.0, 3.0)  # boot time
        self.client = self._make_client()
        self.schedule_connect(self.down_until - time.monotonic())

    def flap(self, outage_s: float) -> None:
        """The network goes away for `outage_s`; the device buffers meanwhile."""
        self.down_until = time.monotonic() + outage_s
        self.cut()

    def settled(self) -> bool:
        return (not self.producing() and not self.core.waiting and not self.core.in_flight
                and not self.pending)

    def publish_death(self) -> None:
        if self.connected:
            death = self.core.death()
            self.death_mid = self.client.publish(death.topic, death.payload, qos=1).mid

    def stats(self, ledger_counts: dict[str, int]) -> DeviceStats:
        d = self.device
        return DeviceStats(
            device_id=d.device_id,
            profile=d.profile.name,
            boot=d.boot,
            published=ledger_counts.get(d.device_id, 0),
            replayed=d.replayed_total,
            buffered=d.buffered_total,
            unsent=d.buffered + self.pending_frames,
            dropped=d.dropped,
            refused=self.refused,
            births=self.births,
            reboots=d.reboots,
            lost_on_reboot=d.lost_on_reboot + self.lost_in_flight,
            duplicates=self.duplicates,
            malformed=self.malformed,
            faults=tuple(sorted(str(f) for f in d.faults)),
        )


def _wall_ms() -> int:
    return int(time.time() * 1000)
