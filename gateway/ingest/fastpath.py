"""The fast receive path: paho's client with its per-message work trimmed (`mqtt_fast_path`).

Measured by bench/throughput.py (bench/RESULTS.md, "How it got from 295 µs to ~150 µs"), each
step an A/B on the same machine:
- buffered socket reads: paho reads every packet in several recv() calls (header byte, length
  bytes, body), four system calls per telemetry frame, about a fifth of the gateway's CPU;
- every buffered packet handled per wake-up instead of one per select(): each select released
  the GIL to the busy event loop and waited to get it back (A/B: -30% gateway CPU per frame);
- QoS 0/1 PUBLISH handed straight to the adapter, no topic matcher or callback locks (A/B:
  -15%), and parsed by `publish.split_publish` without an MQTTMessage or an MQTT 5 Properties
  object per message (about a tenth of the CPU: 84 -> 64.5 µs per frame);
- one PUBACK run per group commit, written as one packet through paho's queue.

It depends on these private paho names (paho is pinned below 2.3 in pyproject.toml for them, and
tests/stages/test_ingest.py checks their signatures, so an upgrade that changes them fails there):
- `Client._create_socket()` returns the connected socket (over TLS an `ssl.SSLSocket` after
  its handshake): wrapped in `BufferedSocket`;
- `Client.loop_read()` reads one packet per call: called again while bytes are buffered;
- `Client._handle_publish()` handles a PUBLISH whose fixed-header byte and body are in
  `Client._in_packet["command"]` and `["packet"]`;
- `Client._handle_on_message(message)` hands paho's own decoded messages on, and
  `MQTTMessage._topic` holds the topic bytes (for a topic that is not UTF-8);
- `Client._packet_queue(command, packet, mid, qos)` queues one packet to write (what ack() uses).
With `mqtt_fast_path = false` the gateway uses stock paho and none of this (mqtt.py), so a paho
upgrade can be tried with the setting off.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable, Sequence
from typing import Any, cast

import paho.mqtt.client as mqtt
from paho.mqtt.client import PUBACK
from paho.mqtt.enums import MQTTErrorCode

from gateway.ingest.publish import PublishRefused, split_publish

_PUBACK = bytes((PUBACK, 2))  # MQTT 5 PUBACK, short form: reason "success" implied
_READ_CHUNK = 65536

# (topic, payload, packet id, qos) of each message received
DeliverRaw = Callable[[bytes, bytes, int, int], None]


class BufferedSocket:
    """A TCP or TLS socket whose recv() serves paho's many small reads from one large read.

    pending() is the hook paho already has for TLS sockets: while it is non-zero paho's select()
    does not wait, so no buffered byte is ever left unread. Over TLS it adds the bytes OpenSSL
    has decrypted but not yet handed out (the SSLSocket's own pending()), which select() cannot
    see either. An SSLSocket's recv() raises ssl.SSLWantReadError/SSLWantWriteError where a
    plain one raises BlockingIOError: they pass through to paho's _sock_recv, which handles
    both. Everything else is the socket's own.
    """

    __slots__ = ("_buf", "_inner_pending", "_pos", "_sock")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0
        self._inner_pending: Callable[[], int] | None = (
            sock.pending if isinstance(sock, ssl.SSLSocket) else None)

    def recv(self, bufsize: int) -> bytes:
        if self._pos >= len(self._buf):
            # BlockingIOError (TLS: SSLWantReadError), b"" at EOF
            data = self._sock.recv(max(bufsize, _READ_CHUNK))
            if self._inner_pending is not None and data:
                data = self._more_records(data)
            if len(data) <= bufsize:
                return data
            self._buf, self._pos = data, 0
        start = self._pos
        self._pos = min(start + bufsize, len(self._buf))
        return self._buf[start:self._pos]

    def _more_records(self, first: bytes) -> bytes:
        """Over TLS one read returns one record, and Mosquitto sends every packet as a record
        of its own: read on while records are there, so that one wake-up handles every packet
        that arrived, as on plain TCP (one read per record is OpenSSL's way; this saves a
        select() and a GIL hand-over per packet)."""
        parts, size = [first], len(first)
        while size < _READ_CHUNK:
            try:
                more = self._sock.recv(_READ_CHUNK - size)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break  # nothing more now: the next recv() raises it to paho if still so
            if not more:
                break  # EOF: the next recv() returns it
            parts.append(more)
            size += len(more)
        return first if len(parts) == 1 else b"".join(parts)

    def pending(self) -> int:
        inner = self._inner_pending
        return len(self._buf) - self._pos + (inner() if inner is not None else 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class FastClient(mqtt.Client):
    """paho's client, cheaper per message: buffered reads (TCP or TLS), every buffered packet
    handled per wake-up, and QoS 0/1 PUBLISH handed straight to `deliver_raw` (fleetgate
    registers no per-topic callbacks and reads no publish properties)."""

    # Receives (topic, payload, packet id, qos) of every message; set by MqttIngest.
    deliver_raw: DeliverRaw | None = None
    _buffered: BufferedSocket | None = None

    def _create_socket(self) -> Any:
        sock = super()._create_socket()  # over TLS: an SSLSocket, its handshake done
        if isinstance(sock, socket.socket):  # not a websocket wrapper (fleetgate uses none)
            self._buffered = BufferedSocket(sock)
            return self._buffered
        return sock

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Read every packet already buffered, not one per select() as paho does: one
        system call per 64 KiB read instead of one per message."""
        rc = super().loop_read(max_packets)
        buffered = self._buffered
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and buffered is not None \
                and buffered.pending() > 0 and self._buffered is buffered:
            rc = super().loop_read(1)
        return rc

    def _handle_on_message(self, message: mqtt.MQTTMessage) -> None:
        # Messages paho decoded itself (QoS 2, or a PUBLISH the lean parser refused).
        deliver = self.deliver_raw
        if deliver is None:
            super()._handle_on_message(message)
        else:
            deliver(message._topic, cast(bytes, message.payload), message.mid, message.qos)

    def _handle_publish(self) -> MQTTErrorCode:
        """QoS 0/1 PUBLISH straight to deliver_raw(topic, payload, mid, qos).

        Anything unusual (QoS 2, a packet the parser refuses) goes to paho's own handler, which
        decodes it or raises its proper errors.
        """
        deliver = self.deliver_raw
        command = self._in_packet["command"]
        qos = (command & 0x06) >> 1
        if deliver is None or qos > 1:
            return super()._handle_publish()
        try:
            topic, payload, mid = split_publish(self._in_packet["packet"], qos)
        except PublishRefused:
            return super()._handle_publish()
        deliver(topic, payload, mid, qos)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def queue_pubacks(self, mids: Sequence[int]) -> None:
        """PUBACK every mid, in order, as one write: paho offers no batched acknowledgement, and
        its packet queue (what ack() uses) takes a run of PUBACKs as one packet."""
        self._packet_queue(PUBACK, b"".join(
            _PUBACK + mid.to_bytes(2, "big") for mid in mids), 0, 0)
