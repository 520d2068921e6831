"""TLS to the broker (mqtts://): the client SSLContext built from `MqttTls`, checked at start-up.

The broker's certificate is always verified (CERT_REQUIRED) and so is its name against the host
of mqtt_url (check_hostname): there is no setting to turn either off. A private CA comes from
mqtt_ca_file, otherwise the system's trust store; a client certificate (mutual TLS) from
mqtt_cert_file + mqtt_key_file. TLS 1.2 is the oldest version offered.

Files that do not load are a ConfigError naming the setting when the gateway starts, not a paho
traceback at the first connect. The files are read once: a renewed client certificate or CA
takes a restart.

A TLS failure (unknown CA, a name not in the broker's certificate, an expired one, our client
certificate refused) is logged here with OpenSSL's reason: paho catches the error, retries, and
tells its callbacks nothing about why.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import NoReturn

from gateway.errors import ConfigError
from gateway.stage_config import MqttTls

log = logging.getLogger(__name__)

_PEM_HINT = "a PEM file readable by the gateway"


class _ReasonLoggingSocket(ssl.SSLSocket):
    """An SSLSocket that logs why TLS failed (then raises as before): in the handshake (the
    broker's certificate refused) or at the first read (TLS 1.3: the broker refused ours)."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except ssl.SSLError as exc:
            log.error("MQTT TLS handshake with %s failed: %s", self.server_hostname,
                      _reason(exc))
            raise

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        try:
            return super().recv(buflen, flags)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise  # no data yet: paho waits for the socket
        except ssl.SSLError as exc:
            log.error("MQTT TLS connection to %s failed: %s", self.server_hostname,
                      _reason(exc))
            raise


def _reason(exc: ssl.SSLError) -> str:
    return str(getattr(exc, "verify_message", None) or exc.reason or exc)


def client_context(tls: MqttTls) -> ssl.SSLContext:
    """The SSLContext paho connects with; ConfigError if a file does not load."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname on
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True  # the defaults, said again: nothing here may weaken them
    context.verify_mode = ssl.CERT_REQUIRED
    if tls.ca_file is not None:
        _load_ca(context, tls.ca_file)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if tls.cert_file is not None or tls.key_file is not None:
        _load_client_cert(context, tls.cert_file, tls.key_file)
    context.sslsocket_class = _ReasonLoggingSocket
    return context


def _load_ca(context: ssl.SSLContext, ca_file: Path) -> None:
    _readable(ca_file, "mqtt_ca_file")
    try:
        context.load_verify_locations(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"mqtt_ca_file {ca_file}: no CA certificate could be read from it "
                          f"({exc})", hint="the PEM certificate of the CA that signed the "
                          "broker's certificate") from exc


def _load_client_cert(context: ssl.SSLContext, cert_file: Path | None,
                      key_file: Path | None) -> None:
    if cert_file is None or key_file is None:  # settings.py refuses this already
        raise ConfigError("a client certificate needs both mqtt_cert_file and mqtt_key_file")
    _readable(cert_file, "mqtt_cert_file")
    _readable(key_file, "mqtt_key_file")

    def refuse_password() -> NoReturn:
        # Without a callback OpenSSL would prompt on the terminal for an encrypted key, and a
        # service would hang there.
        raise ConfigError(f"mqtt_key_file {key_file} is encrypted", hint="fleetgate reads an "
                          "unencrypted key (protect it with file permissions, e.g. 0600)")

    try:
        context.load_cert_chain(str(cert_file), str(key_file), password=refuse_password)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(f"mqtt_key_file {key_file} is not the key of mqtt_cert_file "
                              f"{cert_file}", hint="the private key the certificate was "
                              "issued for") from exc
        if not _is_certificate(cert_file):
            raise ConfigError(f"mqtt_cert_file {cert_file}: no certificate could be read from "
                              "it", hint="the PEM client certificate (chain)") from exc
        raise ConfigError(f"mqtt_key_file {key_file}: no private key could be read from it "
                          f"({exc.reason or exc})", hint="the PEM private key, unencrypted"
                          ) from exc


def _is_certificate(path: Path) -> bool:
    """The file holds a PEM certificate (to name the bad file when a pair does not load)."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(path))
    except (OSError, ssl.SSLError):
        return False
    return True


def _readable(path: Path, setting: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"{setting} {path}: {exc.strerror or exc}", hint=_PEM_HINT) from exc
