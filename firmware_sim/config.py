"""Fleet settings: one frozen value, checked once before anything connects."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from device_protocol import ProtocolError, birth_topic, gateway_state_topic
from firmware_sim.device import DEFAULT_RING_SIZE
from firmware_sim.faults import FaultSpec, FaultSpecError
from firmware_sim.profiles import PROFILES, Profile


class ConfigError(ValueError):
    """A fleet setting that cannot work; the message says which and why."""


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = None


def parse_mqtt_url(url: str) -> BrokerAddress:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "tcp"):
        raise ConfigError(f"MQTT URL {url!r}: scheme must be mqtt:// (TLS is not supported yet)")
    if not parts.hostname:
        raise ConfigError(f"MQTT URL {url!r} has no host; expected mqtt://HOST:PORT")
    try:
        port = parts.port or 1883
    except ValueError as exc:
        raise ConfigError(f"MQTT URL {url!r}: bad port") from exc
    return BrokerAddress(parts.hostname, port, parts.username, parts.password)


@dataclass(frozen=True, slots=True)
class FleetConfig:
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    devices: int = 20
    profiles: tuple[Profile, ...] = tuple(PROFILES.values())
    interval_s: float = 5.0
    duration_s: float | None = None  # None: until stopped
    frames: int | None = None  # live frames per device, then stop once all are acknowledged
    seed: int = 0
    topic_prefix: str = "fleet"
    gateway_id: str = "gw1"
    device_prefix: str = "sim"
    ring_size: int = DEFAULT_RING_SIZE
    samples_per_frame: int | None = None  # None: each profile's natural count
    replay_batch: int = 10  # frames per device per replay period: 100 frames/s at most
    # Replay waits while this many frames await their PUBACK, so a reconnecting herd drains at
    # the pace the broker (and the gateway behind it) acknowledges, not at socket speed.
    max_unacked: int = 20
    keepalive_s: int = 30
    # A device starts its cadence when it first connects, as firmware does after boot; one that
    # cannot connect for this long starts sampling (and buffering) anyway.
    connect_grace_s: float = 5.0
    stop_timeout_s: float = 10.0  # for the last acks and the deaths at shutdown
    faults: tuple[FaultSpec, ...] = ()  # --fault KIND=WHO[@PARAM]
    fault_rate_per_hour: float = 0.0  # spontaneous model faults per device-hour
    connect_rate: float = 1000.0  # CONNECTs per second at start: a herd, but a paced one

    def validate(self) -> None:
        if self.devices <= 0:
            raise ConfigError(f"--devices must be positive, got {self.devices}")
        if not self.profiles:
            raise ConfigError("at least one profile is needed")
        if self.interval_s <= 0:
            raise ConfigError(f"--interval must be positive, got {self.interval_s}")
        if self.frames is not None and self.frames < 0:
            raise ConfigError(f"--frames must be >= 0, got {self.frames}")
        if self.duration_s is not None and self.duration_s < 0:
            raise ConfigError(f"--duration must be >= 0, got {self.duration_s}")
        if self.fault_rate_per_hour < 0:
            raise ConfigError(f"--fault-rate must be >= 0, got {self.fault_rate_per_hour}")
        if self.connect_rate <= 0:
            raise ConfigError(f"connect_rate must be positive, got {self.connect_rate}")
        parse_mqtt_url(self.mqtt_url)
        ids = [f"{self.device_prefix}-{i + 1:04d}" for i in range(self.devices)]
        for spec in self.faults:
            try:
                spec.select(ids, self.seed)
            except FaultSpecError as exc:
                raise ConfigError(str(exc)) from exc
        try:
            birth_topic(self.topic_prefix, f"{self.device_prefix}-0001")
            gateway_state_topic(self.topic_prefix, self.gateway_id)
        except ProtocolError as exc:
            raise ConfigError(f"topic prefix, gateway id or device prefix: {exc}") from exc
