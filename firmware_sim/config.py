"""Fleet settings: one frozen value, checked once before anything connects.

Over TLS (an mqtts:// URL) each device can prove who it is as real firmware does, with its own
credentials: a client certificate (`tls_cert_dir`: `<device_id>.crt` and `<device_id>.key`, the
layout of `fleetgate certs issue`'s `clients/` folder) and/or a password (`password_file`:
`<device_id>:<password>` lines, the username being the device id). The simulator takes file
paths only: it must not import the gateway that makes them.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
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
    tls: bool = False


_SCHEMES = {"mqtt": (False, 1883), "tcp": (False, 1883), "mqtts": (True, 8883)}


def parse_mqtt_url(url: str) -> BrokerAddress:
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise ConfigError(f"MQTT URL {url!r}: scheme must be mqtt:// or mqtts:// (TLS)")
    tls, default_port = _SCHEMES[parts.scheme]
    if not parts.hostname:
        raise ConfigError(f"MQTT URL {url!r} has no host; expected mqtt://HOST:PORT")
    try:
        port = parts.port or default_port
    except ValueError as exc:
        raise ConfigError(f"MQTT URL {url!r}: bad port") from exc
    return BrokerAddress(parts.hostname, port, parts.username, parts.password, tls)


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
    # Replayed frames awaiting their PUBACK, at most (the device core's max_in_flight), so a
    # reconnecting herd drains at the pace the broker (and the gateway behind it)
    # acknowledges, not at socket speed.
    max_unacked: int = 20
    keepalive_s: int = 30
    # A device starts its cadence when it first connects, as firmware does after boot; one that
    # cannot connect for this long starts sampling (and buffering) anyway.
    connect_grace_s: float = 5.0
    stop_timeout_s: float = 10.0  # for the last acks and the deaths at shutdown
    faults: tuple[FaultSpec, ...] = ()  # --fault KIND=WHO[@PARAM]
    fault_rate_per_hour: float = 0.0  # spontaneous model faults per device-hour
    connect_rate: float = 1000.0  # CONNECTs per second at start: a herd, but a paced one
    tls_ca_file: str | None = None  # the broker's CA (mqtts://); None: the system's CAs
    tls_cert_dir: str | None = None  # <device_id>.crt / .key per device (mutual TLS)
    password_file: str | None = None  # <device_id>:<password> lines; username = device id

    def device_ids(self) -> list[str]:
        return [f"{self.device_prefix}-{i + 1:04d}" for i in range(self.devices)]

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
        broker = parse_mqtt_url(self.mqtt_url)
        ids = self.device_ids()
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
        self._validate_credentials(broker, ids)

    def _validate_credentials(self, broker: BrokerAddress, ids: list[str]) -> None:
        if not broker.tls and (self.tls_ca_file or self.tls_cert_dir):
            # Certificates on a plain connection would be silently unused.
            raise ConfigError("--tls-ca / --tls-cert-dir need an mqtts:// URL")
        if self.tls_ca_file is not None and not Path(self.tls_ca_file).is_file():
            raise ConfigError(f"--tls-ca {self.tls_ca_file}: no such file")
        if self.tls_cert_dir is not None:
            for device_id in ids:
                for path in _cert_pair(self.tls_cert_dir, device_id):
                    if not path.is_file():
                        raise ConfigError(f"--tls-cert-dir: no {path} for device {device_id}")
        if self.password_file is not None:
            if broker.username is not None:
                raise ConfigError("--password-file or a user in the URL, not both")
            missing = set(ids) - set(read_passwords(self.password_file))
            if missing:
                raise ConfigError(f"--password-file {self.password_file}: no password for "
                                  f"{len(missing)} devices, e.g. {min(missing)}")


def _cert_pair(cert_dir: str, device_id: str) -> tuple[Path, Path]:
    folder = Path(cert_dir)
    return folder / f"{device_id}.crt", folder / f"{device_id}.key"


def read_passwords(path: str) -> dict[str, str]:
    """`<device_id>:<password>` per line (blank lines and # comments skipped). The passwords
    are secrets: no error message quotes a line."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"--password-file {path}: {exc.strerror}") from exc
    passwords = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        device_id, sep, password = line.partition(":")
        if not sep or not device_id.strip():
            raise ConfigError(f"--password-file {path}, line {number}: expected "
                              "<device_id>:<password>")
        passwords[device_id.strip()] = password
    return passwords


def device_tls_context(config: FleetConfig, device_id: str | None) -> ssl.SSLContext | None:
    """A device's TLS context (with its own certificate under `tls_cert_dir`), or None over
    plain MQTT. Without certificates, one context (device_id None) serves every device.
    Hostname verification stays on, as on real firmware: the broker's certificate must name
    the URL's host."""
    if not parse_mqtt_url(config.mqtt_url).tls:
        return None
    try:
        context = ssl.create_default_context(cafile=config.tls_ca_file)
        if config.tls_cert_dir is not None and device_id is not None:
            cert, key = _cert_pair(config.tls_cert_dir, device_id)
            context.load_cert_chain(cert, key)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ConfigError(f"TLS credentials of {device_id or 'the fleet'}: {exc}") from exc
    return context
