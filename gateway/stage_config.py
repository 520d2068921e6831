"""The slices of the settings each stage receives (`Settings.*_config()`): plain frozen values,
so a stage never sees the whole settings object. Imports nothing of the gateway but the
endpoint model."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gateway.endpoint_config import RemoteWriteEndpoint


@dataclass(frozen=True, slots=True)
class MqttTls:
    """TLS to the broker (an mqtts:// URL). Hostname verification is always on."""
    ca_file: Path | None = None  # None: the system's trust store
    cert_file: Path | None = None  # a client certificate (mutual TLS) ...
    key_file: Path | None = None  # ... and its key


@dataclass(frozen=True, slots=True)
class MqttConfig:
    host: str
    port: int
    username: str | None
    password: str | None = dataclasses.field(repr=False)
    client_id: str
    keepalive_s: int
    session_expiry_s: int
    receive_maximum: int
    reconnect_min_s: float
    reconnect_max_s: float
    max_in_hand: int
    topic_prefix: str
    gateway_id: str
    fast_path: bool = True
    tls: MqttTls | None = None  # None: plain TCP (mqtt://)


@dataclass(frozen=True, slots=True)
class StoreConfig:
    db_path: Path
    synchronous: Literal["full", "normal"]
    commit_max_frames: int
    commit_max_delay_s: float
    max_buffer_bytes: int
    full_policy: Literal["block", "drop_oldest"]
    ledger_max_ranges: int


@dataclass(frozen=True, slots=True)
class ForwardConfig:
    endpoints: tuple[str, ...]  # the endpoints' names: each one's identity (cursor, metrics)
    max_samples_per_request: int
    flush_deadline_s: float
    request_timeout_s: float
    retry_min_s: float
    retry_max_s: float
    external_labels: tuple[tuple[str, str], ...]
    shutdown_deadline_s: float
    live_first: bool = False
    paused_probe_s: float = 30.0  # a paused endpoint is probed (an empty request) this often
    # How to reach each endpoint (url, credentials, TLS), in the order of `endpoints`.
    targets: tuple[RemoteWriteEndpoint, ...] = ()
