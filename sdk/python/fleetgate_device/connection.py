"""Where and how a Device connects: the MQTT URL, TLS and credentials, as a paho client.

Secrets come from files (the password) and are never logged or kept in an error message.
Over TLS the broker's certificate must be valid for the URL's host: hostname verification is
on and there is no switch to turn it off (as for the gateway, docs/operations.md).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

_DEFAULT_PORTS = {"mqtt": 1883, "tcp": 1883, "mqtts": 8883}


@dataclass(frozen=True)
class Broker:
    host: str
    port: int
    tls: bool


def parse_url(url: str) -> Broker:
    parts = urlsplit(url)
    if parts.scheme not in _DEFAULT_PORTS:
        raise ValueError(f"MQTT URL must be mqtt://, tcp:// or mqtts://host[:port]: {url!r}")
    if parts.username is not None or parts.password is not None:
        # Do not echo the URL: it holds a secret.
        raise ValueError("credentials in the MQTT URL are refused: use username= and "
                         "password_file=")
    if not parts.hostname:
        raise ValueError(f"MQTT URL has no host: {url!r}")
    try:
        port = parts.port or _DEFAULT_PORTS[parts.scheme]
    except ValueError as exc:
        raise ValueError(f"MQTT URL has a bad port: {url!r}") from exc
    return Broker(parts.hostname, port, parts.scheme == "mqtts")


def read_password(path: str | Path) -> str:
    """The first line of the file, without its line end."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read password_file {path}: {exc.strerror}") from None
    password = text.splitlines()[0] if text else ""
    if not password:
        raise ValueError(f"password_file {path} is empty")
    return password


def tls_context(ca_file: str | None, cert_file: str | None, key_file: str | None
                ) -> ssl.SSLContext:
    if (cert_file is None) != (key_file is None):
        raise ValueError("cert_file and key_file go together")
    context = ssl.create_default_context(cafile=ca_file)  # CERT_REQUIRED, check_hostname
    if cert_file is not None:
        context.load_cert_chain(cert_file, key_file)
    return context


def make_client(client_id: str, broker: Broker, *, username: str | None,
                password_file: str | None, ca_file: str | None, cert_file: str | None,
                key_file: str | None, will: tuple[str, bytes]) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=MQTTProtocolVersion.MQTTv5)
    client.will_set(will[0], will[1], qos=1, retain=False)
    if password_file is not None:
        client.username_pw_set(username or client_id, read_password(password_file))
    elif username is not None:
        client.username_pw_set(username)
    if broker.tls:
        client.tls_set_context(tls_context(ca_file, cert_file, key_file))
    elif ca_file or cert_file or key_file:
        raise ValueError("ca_file/cert_file/key_file need an mqtts:// URL")
    # Frames are paced by the core (max_in_flight replays); paho's own window is a bound above.
    client.max_inflight_messages_set(100)
    return client
