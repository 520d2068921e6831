"""Run simulated devices against a real MQTT broker, thousands of them from one thread.

Each device has its own paho client, its own TCP connection and its own Will on its death
topic, as real firmware has one connection per device. paho's own network thread (one per
client, and `select()`, which stops at file descriptor 1024) cannot carry 10,000 devices, so
the clients run in paho's external-loop mode: one `selectors` loop (epoll on Linux) reads and
writes every socket, and one timer heap schedules everything else (frames, replays, reconnects,
keepalives, faults). paho's callbacks therefore run on the fleet's own thread: no locks.

A device is offline when it is not connected to the broker or when the gateway's retained state
says it is offline. No state message at all counts as online: a gateway that never announced
itself should not make the fleet hoard frames forever.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import random
import resource
import selectors
import socket
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
from firmware_sim.faults import MODEL_FAULTS, FaultKind
from firmware_sim.ledger import FrameLedger
from firmware_sim.profiles import ModelFault

_MAX_WAIT_S = 0.05  # longest the loop blocks: bounds how late a timer can fire
_REPLAY_PERIOD_S = 0.1  # one replay batch per device per period
_KEEPALIVE_SWEEP_S = 1.0  # paho's loop_misc (PINGREQ, ping timeouts) for every client
_PROGRESS_EVERY_S = 5.0
_CONNECT_TIMEOUT_S = 2.0  # a blocking TCP connect; a black-holed broker costs this per try
_RECONNECT_MIN_S, _RECONNECT_MAX_S = 1.0, 10.0
_FD_HEADROOM = 64


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
    reboots: int = 0
    lost_on_reboot: int = 0  # frames in the ring or awaiting a PUBACK when the device rebooted
    duplicates: int = 0  # extra copies published on purpose (fault `duplicate`)
    malformed: int = 0  # malformed payloads published on purpose (fault `malformed`)
    faults: tuple[str, ...] = ()  # model faults active at the end


_COUNTS = ("published", "replayed", "buffered", "dropped", "unsent", "refused", "births",
           "reboots", "lost_on_reboot", "duplicates", "malformed")


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
        faults = "".join(f" {name}={self.total(name)}"
                         for name in ("reboots", "lost_on_reboot", "duplicates", "malformed")
                         if self.total(name))
        return (
            f"sim summary: devices={len(self.devices)} published={self.total('published')} "
            f"replayed={self.total('replayed')} buffered={self.total('buffered')} "
            f"dropped={self.total('dropped')} unsent={self.total('unsent')} "
            f"refused={self.total('refused')} "
            f"births={self.total('births')} deaths={self.deaths}{faults} seed={self.seed} "
            f"elapsed={self.elapsed_s:.1f}s"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "elapsed_s": round(self.elapsed_s, 3),
            "devices": len(self.devices),
            "connected": self.connected,
            "deaths": self.deaths,
            **{name: self.total(name) for name in _COUNTS},
            "per_device": {
                d.device_id: {"profile": d.profile, "boot": d.boot, "faults": list(d.faults)}
                | {name: getattr(d, name) for name in _COUNTS}
                for d in self.devices
            },
            "ledger": self.ledger,
        }


@dataclass(slots=True)
class _Pending:
    frame: RawTelemetry
    copy: bool = False  # a deliberate duplicate: its PUBACK is not a new frame


class _DeviceLink:
    """One device, its MQTT client and its schedule. Runs only on the fleet's thread."""

    def __init__(self, fleet: Fleet, device: SimDevice, rng: random.Random) -> None:
        self.fleet = fleet
        self.device = device
        self.rng = rng  # link-level randomness (faults, back-off), apart from the device's
        config = fleet.config
        prefix = config.topic_prefix
        self.topics = {
            "birth": birth_topic(prefix, device.device_id),
            "telemetry": telemetry_topic(prefix, device.device_id),
            "death": death_topic(prefix, device.device_id),
            "cmd": cmd_topic(prefix, device.device_id),
            "gateway": gateway_state_topic(prefix, config.gateway_id),
        }
        self.connected = False
        self.ever_connected = False
        self.started = False  # producing frames on its cadence
        self.gateway_online = True
        self.births = 0
        self.bad_messages = 0  # unreadable cmd / gateway-state payloads, ignored
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
        self.replay_scheduled = False
        self.next_due = 0.0  # of the next frame, on the monotonic clock
        # Fault knobs, set by the fleet from the config.
        self.duplicate_share = 0.0
        self.malformed_rate = 0.0
        self.client = self._make_client()

    # --- the client -------------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.device.device_id,
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        client.connect_timeout = _CONNECT_TIMEOUT_S
        client.will_set(self.topics["death"], self.device.death_payload(), qos=1)
        broker = self.fleet.broker
        if broker.username is not None:
            client.username_pw_set(broker.username, broker.password)
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
        client.subscribe([(self.topics["cmd"], 1), (self.topics["gateway"], 1)])
        self._publish_birth()
        self.connected = True
        self.ever_connected = True
        if not self.started:
            self.start()
        self.kick_replay()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: mqtt.DisconnectFlags,
                       _r: ReasonCode, _p: Properties | None) -> None:
        self.connected = False
        if not self.fleet.stopping:
            self.schedule_connect(max(self.down_until - time.monotonic(), 0.0)
                                  + self.backoff_s * self.rng.uniform(0.5, 1.0))

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        try:
            if message.topic == self.topics["cmd"]:
                if decode_command(bytes(message.payload)).rebirth:
                    self._publish_birth()
            elif message.topic == self.topics["gateway"]:
                self.gateway_online = decode_gateway_state(bytes(message.payload)).online
                self.kick_replay()
        except ProtocolError:
            self.bad_messages += 1

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, reason: ReasonCode,
                    _p: Properties | None) -> None:
        if mid == self.death_mid:
            self.death_acked = not reason.is_failure
        sent = self.pending.pop(mid, None)
        if sent is None or sent.copy:
            return  # a birth, a malformed payload or a deliberate duplicate
        self.pending_frames -= 1
        if reason.is_failure:
            self.refused += 1
        else:
            frame = sent.frame
            self.fleet.ledger.record(self.device.device_id, frame.boot, frame.seq,
                                     historical=frame.historical)
        if len(self.pending) < self.fleet.config.max_unacked:
            self.kick_replay()

    def _publish_birth(self) -> None:
        self.client.publish(self.topics["birth"], self.device.birth_payload(_wall_ms()), qos=1)
        self.births += 1

    # --- schedule ---------------------------------------------------------------------------

    @property
    def online(self) -> bool:
        return self.connected and self.gateway_online

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
        frame = self.device.next_telemetry(_wall_ms())
        self.produced += 1
        if self.online:
            self.publish(frame)
            if self.duplicate_share and self.rng.random() < self.duplicate_share:
                self.publish(frame, copy=True)
            if self.malformed_rate and self.rng.random() < self.malformed_rate:
                self.client.publish(self.topics["telemetry"], self.device.malformed_payload(),
                                    qos=1)
                self.malformed += 1
        else:
            self.device.buffer(frame)
        self.fleet.after_frame(self)
        if self.producing():
            # Keep the cadence: a timer that fired late does not delay the next frame. After a
            # stall longer than an interval the next frame goes at once: one, not a burst.
            self.next_due = max(self.next_due + self.fleet.config.interval_s, now)
            self.fleet.at(self.next_due, self.produce)

    def publish(self, frame: RawTelemetry, *, copy: bool = False) -> None:
        # If the connection dropped since `online` was read, paho keeps the message and sends
        # it after reconnecting; the PUBACK still lands in the ledger.
        info = self.client.publish(self.topics["telemetry"], encode_telemetry(frame), qos=1)
        self.pending[info.mid] = _Pending(frame, copy)
        if copy:
            self.duplicates += 1
        else:
            self.pending_frames += 1

    def kick_replay(self) -> None:
        if not self.replay_scheduled and self.online and self.device.buffered:
            self.replay_scheduled = True
            self.fleet.at(time.monotonic(), self.replay)

    def replay(self) -> None:
        """Drain the ring oldest first, a batch per period, while few PUBACKs are awaited, so a
        reconnecting herd drains at the pace the broker acknowledges, not at socket speed."""
        self.replay_scheduled = False
        if not self.online or not self.device.buffered or self.fleet.stopping:
            return
        if len(self.pending) < self.fleet.config.max_unacked:
            for frame in self.device.drain_frames(self.fleet.config.replay_batch):
                self.publish(frame)
        self.replay_scheduled = True
        self.fleet.at(time.monotonic() + _REPLAY_PERIOD_S, self.replay)

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
        return not self.producing() and not self.device.buffered and not self.pending

    def publish_death(self) -> None:
        if self.connected:
            self.death_mid = self.client.publish(self.topics["death"],
                                                 self.device.death_payload(), qos=1).mid

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


class _SocketLoop:
    """Every client's socket in one selector; readiness is handed to paho."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()

    def watch(self, sock: Any, link: _DeviceLink) -> None:
        self.selector.register(sock, selectors.EVENT_READ, link)

    def unwatch(self, sock: Any) -> None:
        try:
            self.selector.unregister(sock)
        except (KeyError, ValueError):
            pass

    def want_write(self, sock: Any, link: _DeviceLink, on: bool) -> None:
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if on else 0)
        try:
            self.selector.modify(sock, events, link)
        except (KeyError, ValueError):
            pass

    def poll(self, timeout_s: float) -> None:
        for key, mask in self.selector.select(timeout_s):
            client = key.data.client
            if mask & selectors.EVENT_READ:
                client.loop_read()
            if mask & selectors.EVENT_WRITE and client.socket() is not None:
                client.loop_write()

    def busy(self) -> bool:
        return bool(self.selector.get_map())

    def close(self) -> None:
        self.selector.close()


def _wall_ms() -> int:
    return int(time.time() * 1000)


def _raise_fd_limit(wanted: int) -> None:
    """One socket per device: lift the soft limit towards the hard one when the fleet needs it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


class Fleet:
    """Build with a config, `run()` in any thread, `stop()` from any other."""

    def __init__(
        self, config: FleetConfig, *, progress: Callable[[str], None] | None = None
    ) -> None:
        config.validate()
        self.config = config
        self.broker: BrokerAddress = parse_mqtt_url(config.mqtt_url)
        self.ledger = FrameLedger()
        self.io = _SocketLoop()
        self._progress = progress
        # A plain flag, not an Event: stop() is called from signal handlers, and Event.set()
        # takes a lock the interrupted main thread may hold. The loop polls it every turn.
        self._stop_requested = False
        self.stopping = False
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._tie = itertools.count()
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
            link = _DeviceLink(self, device, random.Random(f"{config.seed}/{device_id}/link"))
            self._links.append(link)
        self._by_id = {link.device.device_id: link for link in self._links}
        self._fault_rng = random.Random(f"{config.seed}/faults")
        self._pending_model_faults: list[tuple[float, _DeviceLink, ModelFault]] = []
        self._apply_fault_settings()

    def _apply_fault_settings(self) -> None:
        ids = self.device_ids
        for spec in self.config.faults:
            for device_id in spec.select(ids, self.config.seed):
                link = self._by_id[device_id]
                if spec.kind is FaultKind.CLOCK_SKEW:
                    link.device.clock_skew_ms = round(spec.param * 1000)
                elif spec.kind is FaultKind.DUPLICATE:
                    link.duplicate_share = spec.param
                elif spec.kind is FaultKind.MALFORMED:
                    link.malformed_rate = spec.param
                elif spec.kind is FaultKind.CARDINALITY:
                    link.device.cardinality_per_frame = round(spec.param)
                elif spec.kind in MODEL_FAULTS:
                    fault = ModelFault(spec.kind.value)
                    if fault in link.device.profile.model_faults:
                        self._pending_model_faults.append((spec.param, link, fault))

    @property
    def device_ids(self) -> list[str]:
        return [link.device.device_id for link in self._links]

    def stop(self) -> None:
        """Ask `run()` to stop; safe from a signal handler."""
        self._stop_requested = True

    def connected(self) -> int:
        return sum(link.connected for link in self._links)

    def produced(self) -> int:
        """Telemetry frames the devices have sampled so far, sent or not."""
        return sum(link.produced for link in self._links)

    def buffered(self) -> int:
        """Frames waiting in the devices' rings now."""
        return sum(link.device.buffered for link in self._links)

    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (when, next(self._tie), action))

    # --- run --------------------------------------------------------------------------------

    def run(self) -> FleetSummary:
        _raise_fd_limit(self.config.devices + _FD_HEADROOM)
        start = time.monotonic()
        self._start = start
        self._schedule_start(start)
        try:
            self._drive(start)
        finally:
            deaths = self._shutdown()
        return self.summary(time.monotonic() - start, deaths)

    def _schedule_start(self, start: float) -> None:
        config = self.config
        # Connect at a bounded rate: a herd of 10,000 CONNECTs at once only queues in the
        # broker's accept backlog.
        for i, link in enumerate(self._links):
            self.at(start + i / config.connect_rate, link.try_connect)
            # A device that cannot connect starts sampling (and buffering) after the grace.
            self.at(start + config.connect_grace_s + i / config.connect_rate,
                    link.start_unless_started)
        for delay, link, fault in self._pending_model_faults:
            self.at(start + delay, functools.partial(link.device.inject, fault))
        for spec in config.faults:
            if spec.kind in (FaultKind.REBOOT, FaultKind.FLAP):
                for device_id in spec.select(self.device_ids, config.seed):
                    self._schedule_periodic(self._by_id[device_id], spec.kind, spec.param)
        self.at(start + _KEEPALIVE_SWEEP_S, self._keepalive_sweep)
        if self._progress is not None:
            self.at(start + _PROGRESS_EVERY_S, self._report_progress)

    def _schedule_periodic(self, link: _DeviceLink, kind: FaultKind, mean_s: float) -> None:
        delay = link.rng.expovariate(1.0 / mean_s)

        def fire() -> None:
            if self.stopping:
                return
            if kind is FaultKind.REBOOT:
                link.reboot()
            else:
                # Outages of 10-25 % of the mean period: long enough to buffer several frames.
                link.flap(mean_s * link.rng.uniform(0.1, 0.25))
            self._schedule_periodic(link, kind, mean_s)

        self.at(time.monotonic() + delay, fire)

    def after_frame(self, link: _DeviceLink) -> None:
        """Spontaneous model faults: rare, at `fault_rate_per_hour` per device."""
        rate = self.config.fault_rate_per_hour
        if not rate or self._fault_rng.random() >= rate * self.config.interval_s / 3600.0:
            return
        candidates = sorted(link.device.profile.model_faults - link.device.faults)
        if candidates:
            link.device.inject(self._fault_rng.choice(candidates))

    def _keepalive_sweep(self) -> None:
        for link in self._links:
            if link.client.socket() is not None:
                link.client.loop_misc()
        self.at(time.monotonic() + _KEEPALIVE_SWEEP_S, self._keepalive_sweep)

    def _report_progress(self) -> None:
        assert self._progress is not None
        self._progress(self._progress_line())
        self.at(time.monotonic() + _PROGRESS_EVERY_S, self._report_progress)

    def _run_due(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, action = heapq.heappop(timers)
            action()

    def _wait_s(self, now: float) -> float:
        if not self._timers:
            return _MAX_WAIT_S
        return max(0.0, min(_MAX_WAIT_S, self._timers[0][0] - now))

    def _drive(self, start: float) -> None:
        deadline = None if self.config.duration_s is None else start + self.config.duration_s
        next_settle_check = start
        while not self._stop_requested:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return
            self._run_due(now)
            if self.config.frames is not None and now >= next_settle_check:
                if all(link.settled() for link in self._links):
                    return
                next_settle_check = now + 0.1
            self.io.poll(self._wait_s(time.monotonic()))

    def _shutdown(self) -> int:
        self.stopping = True
        deadline = time.monotonic() + self.config.stop_timeout_s
        # Let frames already on the wire be acknowledged, so the ledger is complete.
        self._settle(lambda link: not (link.connected and link.pending), deadline)
        for link in self._links:
            link.publish_death()
        self._settle(lambda link: link.death_mid is None or link.death_acked, deadline)
        # A clean DISCONNECT: the broker discards the Will. paho closes each socket once its
        # DISCONNECT is written.
        for link in self._links:
            if link.client.socket() is not None:
                link.client.disconnect()
        while self.io.busy() and time.monotonic() < deadline:
            self.io.poll(_MAX_WAIT_S)
        for link in self._links:
            sock = link.client.socket()
            if sock is not None:
                self.io.unwatch(sock)
                sock.close()
        self.io.close()
        return sum(link.death_acked for link in self._links)

    def _settle(self, done: Callable[[_DeviceLink], bool], deadline: float) -> None:
        next_check = 0.0
        while time.monotonic() < deadline:
            now = time.monotonic()
            if now >= next_check:
                if all(done(link) for link in self._links):
                    return
                next_check = now + 0.05
            self._run_due(now)  # keepalives and reconnects go on; produce/replay see `stopping`
            self.io.poll(_MAX_WAIT_S / 5)

    def _progress_line(self) -> str:
        published = len(self.ledger)
        buffered = self.buffered()
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
