"""One typed settings object: defaults < TOML file < FLEETGATE_* environment < explicit values.

Every field is flat so that its environment name is simply FLEETGATE_<FIELD>; docs/operations.md
lists each one. Each stage receives only its own slice (the `*_config` methods), never the whole.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, cast
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from gateway.endpoint_config import RemoteWriteEndpoint
from gateway.errors import ConfigError
from gateway.setting_names import unknown_env, unknown_toml
from gateway.stage_config import ForwardConfig, MqttConfig, MqttTls, StoreConfig

__all__ = ["ForwardConfig", "MqttConfig", "MqttTls", "Settings", "StoreConfig", "load_settings",
           "parse_listen", "parse_mqtt_url"]

_GATEWAY_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_GATEWAY_LABELS = frozenset({"device_id", "le"})  # every series has device_id; buckets have le


class Settings(BaseSettings):
    # hide_input_in_errors: a validation error must never echo a password into a log.
    model_config = SettingsConfigDict(env_prefix="FLEETGATE_", extra="forbid",
                                      hide_input_in_errors=True)

    # --- identity and topics
    gateway_id: str = "gw1"  # names the state topic and the default MQTT client id
    topic_prefix: str = "fleet"  # protocol v1's default prefix

    # --- MQTT ingest
    mqtt_url: str = "mqtt://127.0.0.1:1883"  # Mosquitto on the same host is the usual layout
    # (mqtts://host[:port] is TLS, port 8883 by default; the broker's name is always verified)
    mqtt_ca_file: Path | None = None  # a private CA for mqtts://; default: the system's
    mqtt_cert_file: Path | None = None  # a client certificate for mqtts:// (mutual TLS) ...
    mqtt_key_file: Path | None = None  # ... and its key
    mqtt_username: str | None = None
    mqtt_password: str | None = Field(None, repr=False)
    mqtt_password_file: Path | None = None  # the password read from a file instead
    mqtt_client_id: str | None = None  # default "fleetgate-<gateway_id>": stable => session kept
    mqtt_keepalive_s: int = Field(30, gt=0)  # broker notices a dead gateway within ~45 s
    # One week: the broker keeps our queue through any outage an operator would plausibly fix.
    mqtt_session_expiry_s: int = Field(7 * 24 * 3600, gt=0)
    # Unacked QoS 1 messages the broker may have in flight to us. Acks wait for a group commit,
    # so this must cover several commit groups or it, not SQLite, caps throughput.
    mqtt_receive_maximum: int = Field(2000, gt=0, le=65535)
    mqtt_reconnect_min_s: float = Field(0.5, gt=0)
    mqtt_reconnect_max_s: float = Field(30.0, gt=0)
    # Messages received but not yet acked; when reached, paho's thread waits (backpressure).
    mqtt_max_in_hand: int = Field(20_000, gt=0)
    # paho with its per-message work trimmed through private hooks (gateway/ingest/fastpath.py):
    # it took the gateway from ~150 to ~65 µs of CPU per frame. Off = stock paho (try upgrades).
    mqtt_fast_path: bool = True

    # --- store
    data_dir: Path = Path("var/fleetgate")
    # "full": an acked frame survives power loss; "normal": survives a process crash only.
    sqlite_synchronous: Literal["full", "normal"] = "full"
    # Frames per transaction: amortises the fsync.
    commit_max_frames: int = Field(2000, gt=0)
    # Longest a frame waits for its group commit (and so its PUBACK); 0 = commit what is there.
    commit_max_delay_ms: int = Field(20, ge=0)
    # Payload bytes held for forwarding; 4 GiB is ~15M frames of 20 samples.
    buffer_max_bytes: int = Field(4 * 1024**3, gt=0)
    buffer_full_policy: Literal["block", "drop_oldest"] = "block"  # block = lose nothing
    # Gaps kept per (device, boot) in the dedup ledger; beyond it the oldest gaps are forgotten
    # (a later replay into a forgotten gap would be taken as a duplicate).
    ledger_max_ranges: int = Field(4096, gt=0)
    # Past boots' dedup ledgers and births are forgotten after this long untouched (a device's
    # current boot never is). Must exceed the longest a device or the broker may replay a frame;
    # the broker session lasts mqtt_session_expiry_s (7 days).
    dedup_retention_days: float = Field(30.0, gt=0)
    # Start-up check of the database file: "quick" runs PRAGMA quick_check (reads the whole
    # file, ~1 s per GB from page cache); "off" only opens it. Damage found is salvaged.
    sqlite_startup_check: Literal["quick", "off"] = "quick"

    # --- forward
    # Plain endpoints: URLs, comma-separated. Endpoints with credentials, headers or TLS are
    # [[remote_write]] tables (TOML) or a JSON list in FLEETGATE_REMOTE_WRITE; both add up.
    remote_write_url: Annotated[list[str], NoDecode] = Field(default_factory=list)
    remote_write: list[RemoteWriteEndpoint] = Field(default_factory=list)
    # Samples per request; Prometheus and VictoriaMetrics take 50k+ easily.
    remote_write_max_samples: int = Field(20_000, gt=0)
    remote_write_flush_ms: int = Field(200, ge=0)  # a partial batch waits at most this long
    remote_write_timeout_s: float = Field(15.0, gt=0)
    remote_write_retry_min_s: float = Field(0.5, gt=0)
    remote_write_retry_max_s: float = Field(5.0, gt=0)
    external_labels: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    shutdown_forward_deadline_s: float = Field(5.0, ge=0)  # last forward attempt on SIGTERM
    # While a backlog drains, send new frames ahead of it. Only for receivers that accept
    # out-of-order samples (see docs/operations.md): off by default.
    remote_write_live_first: bool = False
    # An endpoint that answers like it is misconfigured (401/403/404/405/407, 3xx) pauses; this
    # often it is probed with an empty request (no sample is resent) until it answers 2xx. 30 s:
    # an operator's fix is picked up within half a minute, and a probe costs the receiver nothing.
    remote_write_paused_probe_s: float = Field(30.0, gt=0)

    # --- protocol limits
    max_frame_bytes: int = Field(65536, gt=0)
    max_samples_per_frame: int = Field(1000, gt=0)
    # Samples further ahead of the gateway's clock are rejected at decode.
    max_clock_skew_s: float = Field(300.0, ge=0)

    # --- fleet
    # A device is "late" after this many of its declared intervals without a frame, and
    # "offline" after this many (or at once, on a death of its current boot).
    device_late_after_intervals: float = Field(2.0, gt=0)
    device_offline_after_intervals: float = Field(6.0, gt=0)
    device_event_retention_days: float = Field(7.0, gt=0)  # state changes kept in SQLite
    # Distinct series one device may create; samples of further series are dropped, counted
    # (fleet API: over_series_budget, refused_samples) and never reach a receiver.
    device_series_budget: int = Field(2000, gt=0)
    # How often the fleet is written as metrics through remote-write (fleet_device_up, ...);
    # 0 turns that off (the /metrics endpoint still has them).
    fleet_metrics_interval_s: float = Field(60.0, ge=0)

    # --- API
    api_listen: str = "127.0.0.1:8080"
    # "token:scope,token:scope" with scope read or admin. Empty: the API is open (a warning is
    # logged at start-up). /, /healthz, /readyz and /metrics are always open.
    api_tokens: Annotated[dict[str, Literal["read", "admin"]], NoDecode] = Field(
        default_factory=dict, repr=False)
    # The same token:scope pairs read from a file (one per line or comma-separated; # comments),
    # added to api_tokens.
    api_tokens_file: Path | None = None
    # HTTPS for the API: a certificate (chain) and its key, both or neither.
    api_tls_cert_file: Path | None = None
    api_tls_key_file: Path | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    @field_validator("remote_write_url", mode="before")
    @classmethod
    def _split_urls(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [u.strip() for u in value.split(",") if u.strip()]
        return value

    @field_validator("remote_write_url")
    @classmethod
    def _check_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{url!r} must be http(s)://host[:port]/path")
        return urls

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("external_labels")
    @classmethod
    def _check_labels(cls, labels: dict[str, str]) -> dict[str, str]:
        for name, value in labels.items():
            if not _LABEL_NAME_RE.match(name) or name.startswith("__"):
                raise ValueError(f"external label name {name!r} is not a valid label name")
            if name in _GATEWAY_LABELS:
                raise ValueError(f"external label name {name!r} is set by the gateway itself")
            if not value:
                raise ValueError(f"external label {name!r} has an empty value")
        return labels

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _parse_tokens(cls, value: Any) -> Any:
        return parse_token_pairs(value, "api_tokens") if isinstance(value, str) else value

    @field_validator("mqtt_url")
    @classmethod
    def _check_mqtt_url(cls, url: str) -> str:
        parse_mqtt_url(url)
        return url

    @field_validator("api_listen")
    @classmethod
    def _check_listen(cls, listen: str) -> str:
        parse_listen(listen)
        return listen

    @field_validator("external_labels", mode="before")
    @classmethod
    def _parse_labels(cls, value: Any) -> Any:
        if isinstance(value, str):  # "site=lab,region=eu"
            pairs = [p.split("=", 1) for p in value.split(",") if p.strip()]
            if any(len(p) != 2 for p in pairs):
                raise ValueError("external_labels must be name=value pairs, comma-separated")
            return {k.strip(): v.strip() for k, v in pairs}
        return value

    @model_validator(mode="after")
    def _check_secure(self) -> Settings:
        tls = parse_mqtt_url(self.mqtt_url)[2]
        if not tls and (self.mqtt_ca_file or self.mqtt_cert_file):
            raise ValueError("mqtt_ca_file/mqtt_cert_file need an mqtts:// mqtt_url (over "
                             f"{self.mqtt_url!r} they would be ignored)")
        if bool(self.mqtt_cert_file) != bool(self.mqtt_key_file):
            raise ValueError("a client certificate needs both mqtt_cert_file and mqtt_key_file")
        if self.mqtt_password is not None and self.mqtt_password_file is not None:
            raise ValueError("set mqtt_password or mqtt_password_file, not both")
        if (self.mqtt_password is not None or self.mqtt_password_file) \
                and not self.mqtt_username:
            raise ValueError("a MQTT password needs mqtt_username")
        if self.api_tokens_file is not None:
            from_file = cast(dict[str, Literal["read", "admin"]],
                             read_api_tokens_file(self.api_tokens_file))
            self.api_tokens = {**self.api_tokens, **from_file}
        if bool(self.api_tls_cert_file) != bool(self.api_tls_key_file):
            raise ValueError("HTTPS for the API needs both api_tls_cert_file and "
                             "api_tls_key_file")
        endpoints = self.endpoints()
        for what in ("url", "name"):
            seen = [getattr(e, what) for e in endpoints]
            if len(set(seen)) != len(seen):
                raise ValueError(f"two endpoints of remote_write_url/remote_write have the same "
                                 f"{what} (one would get every sample twice, or share the "
                                 "other's position)")
        return self

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if not _GATEWAY_ID_RE.match(self.gateway_id):
            raise ValueError(f"gateway_id {self.gateway_id!r} must match {_GATEWAY_ID_RE.pattern}")
        if not self.topic_prefix or "+" in self.topic_prefix or "#" in self.topic_prefix:
            raise ValueError("topic_prefix must be non-empty and contain no MQTT wildcards")
        if self.mqtt_reconnect_min_s > self.mqtt_reconnect_max_s:
            raise ValueError("mqtt_reconnect_min_s must not exceed mqtt_reconnect_max_s")
        if self.remote_write_retry_min_s > self.remote_write_retry_max_s:
            raise ValueError("remote_write_retry_min_s must not exceed remote_write_retry_max_s")
        if self.device_late_after_intervals >= self.device_offline_after_intervals:
            raise ValueError("device_late_after_intervals must be below "
                             "device_offline_after_intervals")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = _TOML_FILE.get("path")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    # --- slices handed to the stages
    def endpoints(self) -> list[RemoteWriteEndpoint]:
        """remote_write_url's plain endpoints, then the [[remote_write]] ones."""
        return [RemoteWriteEndpoint(url=url) for url in self.remote_write_url] + list(
            self.remote_write)

    def mqtt_config(self, password: str | None = None) -> MqttConfig:
        """`password`: mqtt_password_file's content, read by the caller (see app.py)."""
        host, port, tls = parse_mqtt_url(self.mqtt_url)
        return MqttConfig(
            host=host, port=port, username=self.mqtt_username,
            password=self.mqtt_password if password is None else password,
            tls=MqttTls(self.mqtt_ca_file, self.mqtt_cert_file, self.mqtt_key_file)
            if tls else None,
            client_id=self.mqtt_client_id or f"fleetgate-{self.gateway_id}",
            keepalive_s=self.mqtt_keepalive_s, session_expiry_s=self.mqtt_session_expiry_s,
            receive_maximum=self.mqtt_receive_maximum,
            reconnect_min_s=self.mqtt_reconnect_min_s, reconnect_max_s=self.mqtt_reconnect_max_s,
            max_in_hand=self.mqtt_max_in_hand, topic_prefix=self.topic_prefix,
            gateway_id=self.gateway_id, fast_path=self.mqtt_fast_path,
        )

    def store_config(self) -> StoreConfig:
        return StoreConfig(
            db_path=self.data_dir / "fleetgate.db", synchronous=self.sqlite_synchronous,
            commit_max_frames=self.commit_max_frames,
            commit_max_delay_s=self.commit_max_delay_ms / 1000,
            max_buffer_bytes=self.buffer_max_bytes, full_policy=self.buffer_full_policy,
            ledger_max_ranges=self.ledger_max_ranges,
        )

    def forward_config(self) -> ForwardConfig:
        targets = tuple(self.endpoints())
        return ForwardConfig(
            endpoints=tuple(e.name for e in targets), targets=targets,
            max_samples_per_request=self.remote_write_max_samples,
            flush_deadline_s=self.remote_write_flush_ms / 1000,
            request_timeout_s=self.remote_write_timeout_s,
            retry_min_s=self.remote_write_retry_min_s, retry_max_s=self.remote_write_retry_max_s,
            external_labels=tuple(sorted(self.external_labels.items())),
            shutdown_deadline_s=self.shutdown_forward_deadline_s,
            live_first=self.remote_write_live_first,
            paused_probe_s=self.remote_write_paused_probe_s,
        )


_TOML_FILE: dict[str, Path | None] = {"path": None}


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build and validate the settings; raise ConfigError with every problem listed."""
    if config_file is not None and not config_file.is_file():
        raise ConfigError(f"config file {config_file} not found")
    unknown = _unknown_names(config_file)
    if unknown:
        raise ConfigError("invalid settings: " + "; ".join(unknown),
                          hint="see docs/operations.md for every setting")
    _TOML_FILE["path"] = config_file
    try:
        return Settings(**overrides)
    except ValueError as exc:  # pydantic.ValidationError is a ValueError
        raise ConfigError(f"invalid settings: {exc}",
                          hint="see docs/operations.md for every setting") from exc
    finally:
        _TOML_FILE["path"] = None


def _unknown_names(config_file: Path | None) -> list[str]:
    fields = Settings.model_fields
    tables = {"remote_write": RemoteWriteEndpoint.model_fields}
    problems = unknown_env(os.environ, fields)
    raw = next((v for k, v in os.environ.items() if k.upper() == "FLEETGATE_REMOTE_WRITE"), None)
    if raw:
        try:
            problems += unknown_toml({"remote_write": json.loads(raw)}, fields, tables)
        except ValueError:
            pass  # pydantic reports the bad JSON with the setting's name
    if config_file is not None:
        try:
            data = tomllib.loads(config_file.read_text())
        except (OSError, ValueError) as exc:
            return [f"config file {config_file}: {exc}"]
        problems += unknown_toml(data, fields, tables)
    return [p.replace("(TOML)", f"({config_file})") for p in problems]


_MQTT_SCHEMES = {"mqtt": (1883, False), "tcp": (1883, False), "mqtts": (8883, True)}


def parse_mqtt_url(url: str) -> tuple[str, int, bool]:
    """(host, port, tls) of mqtt://host[:1883] or mqtts://host[:8883]."""
    parts = urlsplit(url)
    if parts.scheme not in _MQTT_SCHEMES or not parts.hostname:
        raise ValueError(f"mqtt_url {url!r} must look like mqtt://host:port or mqtts://host:port")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"mqtt_url {redact_userinfo(url)!r}: set mqtt_username and "
                         "mqtt_password_file, not credentials in the URL (it is logged)")
    default_port, tls = _MQTT_SCHEMES[parts.scheme]
    try:
        port = parts.port or default_port
    except ValueError as exc:  # out of range or not a number
        raise ValueError(f"mqtt_url {url!r}: {exc}") from exc
    return parts.hostname, port, tls


def redact_userinfo(url: str) -> str:
    head, sep, rest = url.partition("://")
    return f"{head}{sep}<redacted>@{rest.rpartition('@')[2]}" if "@" in rest else url


def parse_token_pairs(text: str, where: str) -> dict[str, str]:
    """"token:scope" pairs, comma- or line-separated (# starts a comment line)."""
    tokens: dict[str, str] = {}
    lines = (line for line in text.splitlines() if not line.lstrip().startswith("#"))
    for pair in (p.strip() for line in lines for p in line.split(",")):
        if not pair:
            continue
        token, sep, scope = pair.rpartition(":")
        if not sep or not token or scope not in ("read", "admin"):
            raise ValueError(f"{where} must hold token:scope pairs, with scope read or admin "
                             "(a pair without one was given)")
        tokens[token] = scope
    return tokens


def read_api_tokens_file(path: Path) -> dict[str, str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"api_tokens_file {path}: cannot read it ({exc})") from None
    tokens = parse_token_pairs(text, f"api_tokens_file {path}")
    if not tokens:
        raise ValueError(f"api_tokens_file {path} holds no token:scope pair")
    return tokens


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"api_listen {listen!r} must look like host:port (port 1-65535)")
    return host or "127.0.0.1", int(port)
