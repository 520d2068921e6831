"""Run simulated devices against a real MQTT broker.

One paho client per device, each with its own Will on its death topic and its own network
thread (`loop_start`), as real firmware has one connection per device. A single driver thread
owns every `SimDevice` and all scheduling: it produces frames on each device's cadence, buffers
them while the device is offline, replays the ring (paced, oldest first) once back online, and
moves frames into the ledger when their PUBACK arrives. Paho's threads only flip flags and
publish births; they never touch a device's ring or sequence.

A device is offline when it is not connected to the broker or when the gateway's retained state
says it is offline. No state message at all counts as online: a gateway that never announced
itself should not make the fleet hoard frames forever.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from device_protocol import (
    ProtocolError,
    RawTelemetry,
    birth_topic,
    cmd_topic,
    death_topic,
    decode_command,
    decode_gateway_state,
    encode_telemetry,
    gateway_state_topic,
    telemetry_topic,
)
from firmware_sim.config import BrokerAddress, FleetConfig, parse_mqtt_url
from firmware_sim.device import SimDevice
from firmware_sim.ledger import FrameLedger

_TICK_S = 0.05  # longest the driver sleeps: bounds ack and replay latency
_REPLAY_PERIOD_S = 0.1  # one replay batch per device per period


@dataclass(frozen=True, slots=True)
class DeviceStats:
    device_id: str
    profile: str
    boot: int
    published: int  # telemetry frames the broker acknowledged, live and replayed
    replayed: int  # of which replays from the ring
    buffered: int  # frames ever put in the ring
    unsent: int  # frames still in the ring or awaiting a PUBACK at the end
    dropped: int  # frames pushed out of a full ring
    refused: int  # frames the broker answered with a failure PUBACK (e.g. not authorised)
    births: int


@dataclass(frozen=True, slots=True)
class FleetSummary:
    seed: int
    elapsed_s: float
    connected: int  # devices that connected at least once
    deaths: int  # deaths the broker acknowledged at shutdown
    devices: tuple[DeviceStats, ...]
    ledger: dict[str, dict[int, list[tuple[int, int]]]] = field(default_factory=dict)

    def total(self, name: str) -> int:
        return sum(int(getattr(d, name)) for d in self.devices)

    def line(self) -> str:
        return (
            f"sim summary: devices={len(self.devices)} published={self.total('published')} "
            f"replayed={self.total('replayed')} buffered={self.total('buffered')} "
            f"dropped={self.total('dropped')} unsent={self.total('unsent')} "
            f"refused={self.total('refused')} "
            f"births={self.total('births')} deaths={self.deaths} seed={self.seed} "
            f"elapsed={self.elapsed_s:.1f}s"
        )

    def to_json(self) -> dict[str, Any]:
        names = ("published", "replayed", "buffered", "dropped", "unsent", "refused", "births")
        return {
            "seed": self.seed,
            "elapsed_s": round(self.elapsed_s, 3),
            "devices": len(self.devices),
            "connected": self.connected,
            "deaths": self.deaths,
            **{name: self.total(name) for name in names},
            "per_device": {
                d.device_id: {"profile": d.profile, "boot": d.boot}
                | {name: getattr(d, name) for name in names}
                for d in self.devices
            },
            "ledger": self.ledger,
        }


class _DeviceLink:
    """One device and its MQTT client."""

    def __init__(self, device: SimDevice, config: FleetConfig, first_due: float) -> None:
        self.device = device
        self._config = config
        prefix = config.topic_prefix
        self._topics = {
            "birth": birth_topic(prefix, device.device_id),
            "telemetry": telemetry_topic(prefix, device.device_id),
            "death": death_topic(prefix, device.device_id),
            "cmd": cmd_topic(prefix, device.device_id),
            "gateway": gateway_state_topic(prefix, config.gateway_id),
        }
        self._lock = threading.Lock()  # guards the device's boot between paho and the driver
        self.connected = False
        self.ever_connected = False
        self.gateway_online = True
        self.births = 0
        self.bad_messages = 0  # unreadable cmd / gateway-state payloads, ignored
        self.refused = 0  # telemetry the broker answered with a failure PUBACK
        self.next_due = first_due
        self.next_replay = 0.0
        self.produced = 0
        self.pending: dict[int, RawTelemetry] = {}  # by MQTT message id, until its PUBACK
        self.death_mid: int | None = None
        self.death_acked = False
        # PUBACKs seen by paho's thread (mid -> accepted), collected by the driver. Tracking
        # by mid rather than MQTTMessageInfo.is_published(), which raises for a message that
        # was published while disconnected even though paho sends it after reconnecting.
        self._acks: dict[int, bool] = {}
        self.client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.device.device_id,
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        client.will_set(self._topics["death"], self.device.death_payload(), qos=1)
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    def start(self, broker: BrokerAddress) -> None:
        if broker.username is not None:
            self.client.username_pw_set(broker.username, broker.password)
        # connect_async: a broker that is down at start is retried by paho's loop thread.
        self.client.connect_async(broker.host, broker.port, keepalive=self._config.keepalive_s)
        self.client.loop_start()

    # --- paho thread -----------------------------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        _props: Properties | None,
    ) -> None:
        if reason.is_failure:
            return
        client.subscribe([(self._topics["cmd"], 1), (self._topics["gateway"], 1)])
        self._publish_birth()
        self.connected = True
        self.ever_connected = True

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.DisconnectFlags,
        _reason: ReasonCode,
        _props: Properties | None,
    ) -> None:
        self.connected = False

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            if message.topic == self._topics["cmd"]:
                if decode_command(bytes(message.payload)).rebirth:
                    self._publish_birth()
            elif message.topic == self._topics["gateway"]:
                self.gateway_online = decode_gateway_state(bytes(message.payload)).online
        except ProtocolError:
            self.bad_messages += 1

    def _on_publish(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        mid: int,
        reason: ReasonCode,
        _props: Properties | None,
    ) -> None:
        with self._lock:
            self._acks[mid] = not reason.is_failure

    def _publish_birth(self) -> None:
        with self._lock:
            payload = self.device.birth_payload(_wall_ms())
        self.client.publish(self._topics["birth"], payload, qos=1)
        self.births += 1

    # --- driver thread ---------------------------------------------------------------------

    @property
    def online(self) -> bool:
        return self.connected and self.gateway_online

    def producing(self) -> bool:
        return self._config.frames is None or self.produced < self._config.frames

    def tick(self, now: float, ledger: FrameLedger, start: float) -> None:
        self.collect_acks(ledger)
        started = self.ever_connected or now >= start + self._config.connect_grace_s
        if started and self.producing() and now >= self.next_due:
            self._produce()
            # Keep the cadence; after a stall send one frame now rather than a burst.
            self.next_due = max(self.next_due + self._config.interval_s, now)
        if self.online and self.device.buffered and now >= self.next_replay:
            if len(self.pending) < self._config.max_unacked:
                with self._lock:
                    frames = self.device.drain_frames(self._config.replay_batch)
                for frame in frames:
                    self._publish(frame)
            self.next_replay = now + _REPLAY_PERIOD_S

    def _produce(self) -> None:
        with self._lock:
            frame = self.device.next_telemetry(_wall_ms())
            self.produced += 1
            if not self.online:
                self.device.buffer(frame)
                return
        self._publish(frame)

    def _publish(self, frame: RawTelemetry) -> None:
        # If the connection dropped since `online` was read, paho keeps the message and sends
        # it after reconnecting; the PUBACK still lands in the ledger.
        info = self.client.publish(self._topics["telemetry"], encode_telemetry(frame), qos=1)
        self.pending[info.mid] = frame

    def collect_acks(self, ledger: FrameLedger) -> None:
        with self._lock:
            acks, self._acks = self._acks, {}
        # Every telemetry mid is in `pending` before this runs (same thread), so an ack that
        # matches nothing belongs to a birth and can be forgotten.
        for mid, accepted in acks.items():
            if mid == self.death_mid:
                self.death_acked = accepted
            frame = self.pending.pop(mid, None)
            if frame is None:
                continue
            if accepted:
                ledger.record(
                    self.device.device_id, frame.boot, frame.seq, historical=frame.historical
                )
            else:
                self.refused += 1

    def settled(self) -> bool:
        return not self.producing() and not self.device.buffered and not self.pending

    def publish_death(self) -> None:
        if not self.connected:
            return
        with self._lock:
            payload = self.device.death_payload()
        self.death_mid = self.client.publish(self._topics["death"], payload, qos=1).mid

    def disconnect(self) -> None:
        self.client.disconnect()  # a clean DISCONNECT: the broker discards the Will

    def join(self) -> None:
        self.client.loop_stop()

    def stats(self, ledger_counts: dict[str, int]) -> DeviceStats:
        d = self.device
        return DeviceStats(
            device_id=d.device_id,
            profile=d.profile.name,
            boot=d.boot,
            published=ledger_counts.get(d.device_id, 0),
            replayed=d.replayed_total,
            buffered=d.buffered_total,
            unsent=d.buffered + len(self.pending),
            dropped=d.dropped,
            refused=self.refused,
            births=self.births,
        )


def _wall_ms() -> int:
    return int(time.time() * 1000)


class Fleet:
    """Build with a config, `run()` in any thread, `stop()` from any other."""

    def __init__(
        self, config: FleetConfig, *, progress: Callable[[str], None] | None = None
    ) -> None:
        config.validate()
        self.config = config
        self.broker = parse_mqtt_url(config.mqtt_url)
        self.ledger = FrameLedger()
        self._progress = progress
        # A plain flag, not an Event: stop() is called from signal handlers, and Event.set()
        # takes a lock the interrupted main thread may hold. The driver polls it every tick.
        self._stop_requested = False
        jitter = random.Random(f"{config.seed}/jitter")
        interval_ms = max(1, round(config.interval_s * 1000))
        self._links: list[_DeviceLink] = []
        for i in range(config.devices):
            device_id = f"{config.device_prefix}-{i + 1:04d}"
            device = SimDevice(
                device_id,
                config.profiles[i % len(config.profiles)],
                random.Random(f"{config.seed}/{device_id}"),
                interval_ms=interval_ms,
                ring_size=config.ring_size,
                samples_per_frame=config.samples_per_frame,
            )
            # Jitter the first frame so the fleet does not publish in lock-step.
            first_due = jitter.uniform(0.0, config.interval_s)
            self._links.append(_DeviceLink(device, config, first_due))

    @property
    def device_ids(self) -> list[str]:
        return [link.device.device_id for link in self._links]

    def stop(self) -> None:
        """Ask `run()` to stop; safe from a signal handler."""
        self._stop_requested = True

    def connected(self) -> int:
        return sum(link.connected for link in self._links)

    def run(self) -> FleetSummary:
        start = time.monotonic()
        for link in self._links:
            link.next_due += start
            link.start(self.broker)
        try:
            self._drive(start)
        finally:
            deaths = self._shutdown()
        return self.summary(time.monotonic() - start, deaths)

    def _drive(self, start: float) -> None:
        deadline = None if self.config.duration_s is None else start + self.config.duration_s
        next_progress = start + 5.0
        while not self._stop_requested:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return
            for link in self._links:
                link.tick(now, self.ledger, start)
            if self.config.frames is not None and all(link.settled() for link in self._links):
                return
            if self._progress is not None and now >= next_progress:
                self._progress(self._progress_line())
                next_progress = now + 5.0
            idle = now + _TICK_S / 5  # only acks and replays to watch
            wake = min([link.next_due for link in self._links if link.producing()] or [idle])
            time.sleep(max(0.001, min(_TICK_S, wake - time.monotonic())))

    def _shutdown(self) -> int:
        deadline = time.monotonic() + self.config.stop_timeout_s
        # Let frames already on the wire be acknowledged, so the ledger is complete.
        self._settle(lambda link: not (link.connected and link.pending), deadline)
        for link in self._links:
            link.publish_death()
        self._settle(lambda link: link.death_mid is None or link.death_acked, deadline)
        # Disconnect all before joining any: a thread asleep in paho's reconnect back-off only
        # notices the disconnect after up to a second, so these waits must overlap.
        for link in self._links:
            link.disconnect()
        for link in self._links:
            link.join()
        return sum(link.death_acked for link in self._links)

    def _settle(self, done: Callable[[_DeviceLink], bool], deadline: float) -> None:
        while True:
            for link in self._links:
                link.collect_acks(self.ledger)
            if all(done(link) for link in self._links) or time.monotonic() >= deadline:
                return
            time.sleep(_TICK_S / 5)

    def _progress_line(self) -> str:
        published = len(self.ledger)
        buffered = sum(link.device.buffered for link in self._links)
        return (
            f"sim: {self.connected()}/{len(self._links)} connected, {published} frames published "
            f"({self.ledger.historical} replayed), {buffered} buffered"
        )

    def summary(self, elapsed_s: float = 0.0, deaths: int = 0) -> FleetSummary:
        counts = self.ledger.count_by_device()
        return FleetSummary(
            seed=self.config.seed,
            elapsed_s=elapsed_s,
            connected=sum(link.ever_connected for link in self._links),
            deaths=deaths,
            devices=tuple(link.stats(counts) for link in self._links),
            ledger=self.ledger.ranges(),
        )
