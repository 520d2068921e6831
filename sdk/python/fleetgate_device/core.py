"""The device core: everything protocol v1 asks of a device, without sockets or clocks.

Sans-I/O: the caller passes `now_ms`, tells the core what its transport did (connected,
disconnected, a message arrived, a publish was acknowledged) and publishes what the core
returns, a list of `Publish` (topic, payload, qos, retain), in order. `Device` (device.py) drives
it with paho-mqtt; the fleet simulator (firmware_sim) drives 10,000 of them from one epoll loop.

What it keeps (docs/protocol.md):
- the boot id (given, or 32 random bits from `secrets` at every boot) and the seq: 0 for the
  boot's first telemetry frame, +1 per frame, whether the frame goes live or into the ring;
- the metric declarations: an alias per (name, kind, bounds), stable within a boot. A new one
  only appends, so every frame of the boot decodes under any birth of the boot; the next live
  frame is preceded by a birth that declares it;
- the ring of frames built while offline (ring.py / file_ring.py), replayed oldest first with
  `h: true`, their boot, seq and time unchanged, at most `max_in_flight` unacknowledged at once;
- births after every connect, on the `{"rebirth": true}` command (same boot, seq not reset) and
  when a gateway announces itself online; the death as the Will and at a clean stop.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from fleetgate_device import wire
from fleetgate_device.ring import MemoryRing, Ring, Ringed
from fleetgate_device.samples import (
    KINDS,
    Kind,
    Sample,
    check_bounds,
    check_device_id,
    check_labels,
    check_metric_name,
    wire_value,
)

DEFAULT_RING_SIZE = 1000
DEFAULT_MAX_IN_FLIGHT = 10
_LABEL_CACHE_MAX = 4096


class FrameKey(NamedTuple):
    boot: int
    seq: int
    historical: bool


class Publish(NamedTuple):
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    frame: FrameKey | None = None  # set on telemetry: what an acknowledgement confirms


@dataclass
class CoreStats:
    live: int = 0  # frames handed to the transport as live
    ringed: int = 0  # frames put in the ring
    dropped: int = 0  # frames pushed out of a full ring (or refused by a zero-size one)
    replayed: int = 0  # frames taken from the ring and handed out with h=true
    refused: int = 0  # telemetry the broker acknowledged with a failure
    births: int = 0
    lost_on_reboot: int = 0  # frames still in a RAM ring at a reboot


class DeviceCore:
    def __init__(
        self,
        device_id: str,
        *,
        hw: str,
        fw: str,
        interval_ms: int,
        labels: Mapping[str, str] | None = None,
        topic_prefix: str = "fleet",
        gateway_id: str | None = None,
        boot: int | None = None,
        ring: Ring | None = None,
        ring_size: int = DEFAULT_RING_SIZE,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        if interval_ms <= 0:
            raise ValueError(f"interval_ms must be positive, got {interval_ms}")
        if max_in_flight <= 0:
            raise ValueError(f"max_in_flight must be positive, got {max_in_flight}")
        for what, text in (("hw", hw), ("fw", fw)):
            if not 1 <= len(text) <= 256:
                raise ValueError(f"{what} must be 1-256 characters, got {text!r}")
        self.device_id = check_device_id(device_id)
        self.hw, self.fw, self.interval_ms = hw, fw, interval_ms
        self.labels = check_labels(labels or {}, "device labels")
        self.topics = wire.topics(topic_prefix, device_id)
        self._gateway_topic = (f"{topic_prefix}/_gateway/{gateway_id}/state"
                               if gateway_id is not None else None)
        self.ring: Ring = ring if ring is not None else MemoryRing(ring_size)
        self.max_in_flight = max_in_flight
        self.stats = CoreStats()
        self.connected = False
        self._gateways: dict[str, bool] = {}
        self._label_cache: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
        self._start_boot(boot)

    def _start_boot(self, boot: int | None) -> None:
        self.boot = secrets.randbits(32) if boot is None else boot
        if not 0 <= self.boot < 2**32:
            raise ValueError(f"boot must be a uint32, got {self.boot}")
        self.seq = 0
        self._decls: list[wire.Declaration] = []
        self._by_name: dict[str, tuple[int, Kind, tuple[float, ...]]] = {}
        self._remembered = -1  # declarations in the birth the ring keeps for this boot
        self._announced: int | None = None  # declarations in this connection's last birth
        self._births_replayed: set[int] = set()  # past boots re-announced on this connection
        self._in_flight: dict[tuple[int, int], Ringed] = {}

    def reboot(self, boot: int | None = None) -> None:
        """A power cycle: a new boot, seq 0, no declarations; a RAM ring is lost (counted)."""
        if isinstance(self.ring, MemoryRing):
            self.stats.lost_on_reboot += self.ring.clear()
        self.connected = False
        self._start_boot(boot)

    # --- declarations -----------------------------------------------------------------------

    def declare(self, name: str, kind: Kind = "gauge", bounds: Iterable[float] = ()) -> int:
        """The alias of (name, kind, bounds), declared now if new; ValueError on a conflict."""
        known = self._by_name.get(name)
        bounds = tuple(bounds)
        if known is not None:
            if known[1] != kind or (kind == "histogram" and known[2] != bounds):
                raise ValueError(f"metric {name} is already a {known[1]}"
                                 f"{list(known[2]) if known[1] == 'histogram' else ''} in this "
                                 f"boot; it cannot also be a {kind}"
                                 f"{list(bounds) if kind == 'histogram' else ''}")
            return known[0]
        if kind not in KINDS:
            raise ValueError(f"metric {name}: unknown kind {kind!r}")
        check_metric_name(name)
        if kind == "histogram":
            bounds = check_bounds(name, bounds)
        elif bounds:
            raise ValueError(f"metric {name}: only histograms have bounds")
        if len(self._decls) >= 1000:
            raise ValueError("a birth declares at most 1000 metrics")
        alias = len(self._decls)
        decl: wire.Declaration = [alias, name, kind]
        if kind == "histogram":
            decl.append(list(bounds))
        self._decls.append(decl)
        self._by_name[name] = (alias, kind, bounds)
        return alias

    @property
    def declarations(self) -> int:
        return len(self._decls)

    # --- payloads ---------------------------------------------------------------------------

    def _birth_payload(self, now_ms: int) -> bytes:
        """The birth as of now; the ring keeps the latest for this boot's frames."""
        payload = wire.birth_payload(self.boot, now_ms, self.hw, self.fw, self.labels,
                                     self.interval_ms, self._decls)
        if self._remembered != len(self._decls):
            self.ring.remember_birth(self.boot, payload)
            self._remembered = len(self._decls)
        return payload

    def birth(self, now_ms: int) -> Publish:
        """The birth to publish now."""
        payload = self._birth_payload(now_ms)
        if self.connected:
            self._announced = len(self._decls)
        self.stats.births += 1
        return Publish(self.topics.birth, payload)

    def death(self) -> Publish:
        """The death: the transport's Will, and the last publish of a clean stop."""
        return Publish(self.topics.death, wire.death_payload(self.boot))

    @property
    def subscriptions(self) -> list[str]:
        return [self.topics.cmd, self._gateway_topic or self.topics.gateway_state]

    @property
    def online(self) -> bool:
        """Connected, and not every gateway known says it is offline."""
        states = self._gateways.values()
        return self.connected and (not states or any(states))

    @property
    def waiting(self) -> int:
        """Frames in the ring now (not counting replays awaiting their acknowledgement)."""
        return len(self.ring)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    # --- transport events -------------------------------------------------------------------

    def on_connect(self, now_ms: int) -> list[Publish]:
        """The transport is connected (and subscribed): the birth, then the replay starts."""
        self.connected = True
        self._births_replayed.clear()
        out = [self.birth(now_ms)]
        self._pump(out)
        return out

    def on_disconnect(self) -> None:
        """Frames in flight stay in flight: the transport resends them after reconnecting."""
        self.connected = False
        self._announced = None

    def on_message(self, topic: str, payload: bytes, now_ms: int,
                   retained: bool = False) -> list[Publish]:
        """A command or a gateway state. A gateway that comes online (a live message, not the
        retained one every subscribe delivers) gets the birth again, and the replay resumes."""
        out: list[Publish] = []
        if topic == self.topics.cmd:
            if wire.is_rebirth(payload) and self.connected:
                out.append(self.birth(now_ms))
            return out
        if not _is_gateway_state(topic, self._gateway_topic, self.topics.gateway_state):
            return out
        state = wire.gateway_online(payload)
        before = self._gateways.get(topic)
        if state is None:
            self._gateways.pop(topic, None)
        else:
            self._gateways[topic] = state
        if state and not retained and before is not True and self.connected:
            out.append(self.birth(now_ms))
        self._pump(out)
        return out

    def on_ack(self, publish: Publish, ok: bool = True) -> list[Publish]:
        """The broker acknowledged `publish`; a replayed frame's ack lets the next one go."""
        out: list[Publish] = []
        key = publish.frame
        if key is None:
            return out
        if not ok:
            self.stats.refused += 1
        if key.historical:
            frame = self._in_flight.pop((key.boot, key.seq), None)
            if frame is not None:
                self.ring.done(frame)
            self._pump(out)
        return out

    # --- telemetry --------------------------------------------------------------------------

    def telemetry(self, now_ms: int, samples: Iterable[Sample]) -> list[Publish]:
        """One frame of `samples`, declaring what is new; live when online, else ringed."""
        rows: list[list[Any]] = []
        for sample in samples:
            alias = self.declare(sample.name, sample.kind, sample.bounds)
            value = wire_value(sample)
            if sample.labels:
                rows.append([alias, value, 0, self._checked_labels(sample)])
            else:
                rows.append([alias, value])
        return self.telemetry_rows(now_ms, rows)

    def _checked_labels(self, sample: Sample) -> dict[str, str]:
        key = tuple(sample.labels.items())
        checked = self._label_cache.get(key)
        if checked is None:
            checked = check_labels(sample.labels, f"metric {sample.name}")
            if len(self._label_cache) >= _LABEL_CACHE_MAX:
                self._label_cache.clear()
            self._label_cache[key] = checked
        return checked

    def telemetry_rows(self, now_ms: int, rows: list[Any]) -> list[Publish]:
        """One frame of samples already in wire form ([metric, value, dt_ms?, labels?], metric
        an alias this core declared or a gauge's name): the fast path of the simulator."""
        if not self.online:
            if self._remembered != len(self._decls):
                self._birth_payload(now_ms)  # a file ring must be able to announce this frame
            seq = self.seq
            payload = self.frame(now_ms, rows, historical=True).payload
            self.stats.ringed += 1
            self.stats.dropped += self.ring.push(Ringed(self.boot, seq, now_ms, payload))
            return []
        out: list[Publish] = []
        if self._announced != len(self._decls):
            out.append(self.birth(now_ms))
        out.append(self.frame(now_ms, rows))
        self.stats.live += 1
        self._pump(out)
        return out

    def frame(self, now_ms: int, rows: list[Any], historical: bool = False) -> Publish:
        """Build the boot's next telemetry frame (consumes a seq), whatever the connection:
        `telemetry_rows` decides where it goes."""
        seq = self.seq
        self.seq += 1
        payload = wire.telemetry_payload(self.boot, seq, now_ms, rows, historical)
        return Publish(self.topics.telemetry, payload, 1, False,
                       FrameKey(self.boot, seq, historical))

    def _pump(self, out: list[Publish]) -> None:
        """Hand out ringed frames while online and fewer than max_in_flight await their ack;
        a frame of a past boot (a file ring after a restart) goes after that boot's birth."""
        while self.online and len(self._in_flight) < self.max_in_flight:
            frame = self.ring.take()
            if frame is None:
                return
            if frame.boot != self.boot and frame.boot not in self._births_replayed:
                self._births_replayed.add(frame.boot)
                birth = self.ring.birth(frame.boot)
                if birth is not None:
                    out.append(Publish(self.topics.birth, birth))
            self._in_flight[frame.boot, frame.seq] = frame
            self.stats.replayed += 1
            out.append(Publish(self.topics.telemetry, frame.payload, 1, False,
                               FrameKey(frame.boot, frame.seq, True)))


def _is_gateway_state(topic: str, exact: str | None, wildcard: str) -> bool:
    if exact is not None:
        return topic == exact
    prefix, _, _ = wildcard.partition("+")
    return topic.startswith(prefix) and topic.endswith("/state") and topic.count("/") == \
        wildcard.count("/")
