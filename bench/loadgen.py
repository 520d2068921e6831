"""Load generator: pre-encoded MQTT 3.1.1 QoS 1 PUBLISH packets written over plain sockets.

A paho publisher tops out near 13k msg/s at QoS 1 and eats a core, which on a small machine
would make the generator, not the consumer, the thing measured. So every packet (fixed header
0x32, remaining length, topic, packet id, payload = a real protocol v1 msgpack frame built by
device_protocol's encoders) is built before timing starts, into one bytes buffer per
connection; sending is then socket writes of slices of that buffer, and receiving is comparing
the broker's PUBACK stream with the one expected (0x40 0x02 <id>, in order).

Device i always publishes on connection i % connections, so each device's frames stay in order.
At most `window` packets per connection are unacknowledged, so packet ids (1..65535, reused
round-robin) never collide with one still in flight.

Run standalone (births, then telemetry, then print a JSON result) or, with --interactive, under
bench/throughput.py: it prints JSON events on stdout and waits for a command line on stdin
("births", "telemetry") before each phase, so the controller can snapshot CPU counters and
wait for the consumer between phases.
"""

from __future__ import annotations

import argparse
import json
import resource
import selectors
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from device_protocol import (
    Birth,
    MetricDef,
    MetricType,
    RawSample,
    RawTelemetry,
    birth_topic,
    encode_birth,
    encode_telemetry,
    telemetry_topic,
)

TOPIC_PREFIX = "fleet"
DEVICE_FORMAT = "bench-{:05d}"
METRIC_FORMAT = "bench_m{:02d}"
BOOT = 1
DEFAULT_WINDOW = 10_000
MAX_PACKET_ID = 65535
_SEND_CHUNK = 256 * 1024
_CONNACK_OK = b"\x20\x02\x00\x00"
_DISCONNECT = b"\xe0\x00"


class LoadgenError(RuntimeError):
    """The broker refused us or answered something other than the expected PUBACKs."""


@dataclass(frozen=True, slots=True)
class Workload:
    devices: int
    frames: int  # telemetry frames per device (seq 0..frames-1)
    samples: int  # samples per frame (= gauge metrics declared by each birth)
    base_ms: int  # timestamp of seq 0; frame seq is at base_ms + seq * 1000

    @classmethod
    def ending_in_past(cls, devices: int, frames: int, samples: int) -> Workload:
        """Timestamps from now - frames s - 60 s, one second apart: all in the past, none in
        the future, recent enough for any receiver's out-of-order/ingest windows."""
        base_ms = int(time.time() * 1000) - frames * 1000 - 60_000
        return cls(devices, frames, samples, base_ms)

    @property
    def telemetry_messages(self) -> int:
        return self.devices * self.frames

    @property
    def total_samples(self) -> int:
        return self.devices * self.frames * self.samples


def device_id(index: int) -> str:
    return DEVICE_FORMAT.format(index)


def metric_name(index: int) -> str:
    return METRIC_FORMAT.format(index)


# ------------------------------------------------------------------------------ MQTT encoding
def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def connect_packet(client_id: str) -> bytes:
    """MQTT 3.1.1 CONNECT, clean session, keepalive off (the link idles between phases)."""
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x00" + len(cid).to_bytes(2, "big") + cid
    return b"\x10" + _remaining_length(len(body)) + body


def publish_qos1(topic: bytes, packet_id: int, payload: bytes) -> bytes:
    head = len(topic).to_bytes(2, "big") + topic + packet_id.to_bytes(2, "big")
    return b"\x32" + _remaining_length(len(head) + len(payload)) + head + payload


def packet_id_for(n: int) -> int:
    """The n-th packet (0-based) of a connection: ids 1..65535 round-robin."""
    return n % MAX_PACKET_ID + 1


# The declared reporting interval. The load generator sends as fast as the gateway takes frames,
# not at a device's pace: at 10,000 devices each device's frames come ~1.5 s apart, and with a
# declared 1 s the fleet flapped late/offline all run long (events, stale markers): lifecycle
# work that a fleet reporting at its declared pace does not cause.
BENCH_INTERVAL_MS = 600_000


def birth_payload(workload: Workload) -> bytes:
    metrics = tuple(MetricDef(i, metric_name(i), MetricType.GAUGE) for i in range(workload.samples))
    birth = Birth(boot=BOOT, time_ms=workload.base_ms, platform="bench", firmware="bench-1",
                  labels=(), interval_ms=BENCH_INTERVAL_MS, metrics=metrics)
    return encode_birth(birth)


def sample_value(device: int, seq: int, metric: int) -> float:
    """Varying, non-integral values (a float64 on the wire, like real sensor readings), which a
    reader of the receiver can recompute to check what was stored."""
    return ((device * 7919 + seq * 104729 + metric * 31) % 100_000) / 8.0 + 0.1


def telemetry_payload(workload: Workload, device: int, seq: int) -> bytes:
    samples = tuple(RawSample(metric=m, value=sample_value(device, seq, m), dt_ms=0, labels=())
                    for m in range(workload.samples))
    raw = RawTelemetry(boot=BOOT, seq=seq, time_ms=workload.base_ms + seq * 1000,
                       samples=samples, historical=False)
    return encode_telemetry(raw)


@dataclass(slots=True)
class Stream:
    """The packets one connection sends in one phase, back to back, and the acks expected."""

    data: bytes
    ends: list[int]  # ends[i] = offset just past packet i
    expected_acks: bytes
    first_packet: int  # packet number (for ids) of the first packet, counted per connection

    @property
    def count(self) -> int:
        return len(self.ends)


def build_streams(payloads: list[list[tuple[bytes, bytes]]],
                  first_packet: list[int]) -> list[Stream]:
    """payloads[c] = [(topic, payload), ...] for connection c, in sending order."""
    streams = []
    for conn, items in enumerate(payloads):
        parts: list[bytes] = []
        acks: list[bytes] = []
        ends: list[int] = []
        offset = 0
        for i, (topic, payload) in enumerate(items):
            pid = packet_id_for(first_packet[conn] + i)
            packet = publish_qos1(topic, pid, payload)
            parts.append(packet)
            offset += len(packet)
            ends.append(offset)
            acks.append(b"\x40\x02" + pid.to_bytes(2, "big"))
        streams.append(Stream(b"".join(parts), ends, b"".join(acks), first_packet[conn]))
    return streams


def build_phases(workload: Workload, connections: int) -> tuple[list[Stream], list[Stream]]:
    """(births, telemetry): per connection, every birth, then telemetry seq by seq."""
    birth = birth_payload(workload)
    births: list[list[tuple[bytes, bytes]]] = [[] for _ in range(connections)]
    telemetry: list[list[tuple[bytes, bytes]]] = [[] for _ in range(connections)]
    topics = [telemetry_topic(TOPIC_PREFIX, device_id(d)).encode()
              for d in range(workload.devices)]
    for d in range(workload.devices):
        births[d % connections].append((birth_topic(TOPIC_PREFIX, device_id(d)).encode(), birth))
    for seq in range(workload.frames):
        for d in range(workload.devices):
            telemetry[d % connections].append((topics[d], telemetry_payload(workload, d, seq)))
    birth_streams = build_streams(births, [0] * connections)
    tele_streams = build_streams(telemetry, [s.count for s in birth_streams])
    return birth_streams, tele_streams


# ------------------------------------------------------------------------------ sending
class Connection:
    def __init__(self, host: str, port: int, client_id: str) -> None:
        self.client_id = client_id
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(connect_packet(client_id))
        connack = b""
        while len(connack) < 4:
            chunk = self.sock.recv(4 - len(connack))
            if not chunk:
                raise LoadgenError(f"{client_id}: broker closed the connection before CONNACK")
            connack += chunk
        if connack != _CONNACK_OK:
            raise LoadgenError(f"{client_id}: CONNACK {connack.hex()} (expected 20020000: "
                               "accepted); does the broker allow anonymous clients?")
        self.sock.setblocking(False)

    def close(self) -> None:
        try:
            self.sock.setblocking(True)
            self.sock.sendall(_DISCONNECT)
        except OSError:
            pass
        self.sock.close()


@dataclass(slots=True)
class _Progress:
    conn: Connection
    stream: Stream
    sent: int = 0  # bytes written
    acked: int = 0  # packets acknowledged
    ack_bytes: int = 0  # bytes of the PUBACK stream received


def send_phase(conns: list[Connection], streams: list[Stream], window: int,
               timeout_s: float = 600.0) -> tuple[float, float]:
    """Write every stream, read every PUBACK; (wall time of first write, of last ack)."""
    if window >= MAX_PACKET_ID:
        raise ValueError(f"window {window} must stay below {MAX_PACKET_ID} (packet ids)")
    sel = selectors.DefaultSelector()
    todo = [_Progress(c, s) for c, s in zip(conns, streams, strict=True) if s.count]
    for progress in todo:
        sel.register(progress.conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, progress)
    first = time.time()
    deadline = time.monotonic() + timeout_s
    remaining = len(todo)
    while remaining:
        if time.monotonic() > deadline:
            raise LoadgenError(f"not every PUBACK arrived within {timeout_s:.0f} s")
        for key, events in sel.select(timeout=1.0):
            p: _Progress = key.data
            stream = p.stream
            if events & selectors.EVENT_READ:
                data = p.conn.sock.recv(1 << 16)
                if not data:
                    raise LoadgenError(f"{p.conn.client_id}: broker closed the connection "
                                       f"after {p.acked}/{stream.count} acks")
                end = p.ack_bytes + len(data)
                if data != stream.expected_acks[p.ack_bytes:end]:
                    raise LoadgenError(f"{p.conn.client_id}: unexpected bytes from the broker "
                                       f"after {p.acked} acks: {data[:16].hex()}...")
                p.ack_bytes = end
                p.acked = end // 4
                if p.acked == stream.count:
                    sel.unregister(p.conn.sock)
                    remaining -= 1
                    continue
            limit = stream.ends[min(p.acked + window, stream.count) - 1]
            if events & selectors.EVENT_WRITE and p.sent < limit:
                view = memoryview(stream.data)[p.sent:min(limit, p.sent + _SEND_CHUNK)]
                try:
                    p.sent += p.conn.sock.send(view)
                except BlockingIOError:
                    pass
            want = selectors.EVENT_READ | (selectors.EVENT_WRITE if p.sent < limit else 0)
            if want != key.events:
                sel.modify(p.conn.sock, want, p)
    sel.close()
    return first, time.time()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_phase(conns: list[Connection], streams: list[Stream], window: int) -> dict[str, Any]:
    cpu0 = cpu_seconds()
    first, last = send_phase(conns, streams, window)
    cpu = cpu_seconds() - cpu0
    messages = sum(s.count for s in streams)
    wall = last - first
    return {"messages": messages, "bytes": sum(len(s.data) for s in streams),
            "first_publish_epoch": first, "last_ack_epoch": last, "wall_s": wall,
            "cpu_s": cpu, "rate_msg_s": messages / wall if wall > 0 else None,
            "cpu_us_per_msg": cpu / messages * 1e6 if messages else None}


def _emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def _await_command(expected: str) -> None:
    line = sys.stdin.readline().strip()
    if line != expected:
        raise LoadgenError(f"expected command {expected!r} on stdin, got {line!r}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mqtt", default="mqtt://127.0.0.1:1883", help="broker, mqtt://host:port")
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--frames", type=int, default=60, help="telemetry frames per device")
    ap.add_argument("--samples", type=int, default=20, help="samples per frame")
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--window", type=int, default=DEFAULT_WINDOW,
                    help="most unacked packets per connection")
    ap.add_argument("--base-ms", type=int, default=None,
                    help="timestamp of seq 0 (default: now - frames s - 60 s)")
    ap.add_argument("--interactive", action="store_true",
                    help="wait for 'births' / 'telemetry' on stdin before each phase")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    url = urlsplit(args.mqtt)
    host, port = url.hostname or "127.0.0.1", url.port or 1883
    workload = Workload.ending_in_past(args.devices, args.frames, args.samples)
    if args.base_ms is not None:
        workload = Workload(args.devices, args.frames, args.samples, args.base_ms)
    cpu0 = cpu_seconds()
    births, telemetry = build_phases(workload, args.connections)
    encode_cpu = cpu_seconds() - cpu0
    conns = [Connection(host, port, f"bench-loadgen-{i}") for i in range(args.connections)]
    try:
        _emit("ready", encode_cpu_s=encode_cpu, base_ms=workload.base_ms,
              telemetry_bytes=sum(len(s.data) for s in telemetry))
        if args.interactive:
            _await_command("births")
        _emit("births_acked", **run_phase(conns, births, args.window))
        if args.interactive:
            _await_command("telemetry")
        _emit("done", connections=args.connections, **run_phase(conns, telemetry, args.window))
    finally:
        for conn in conns:
            conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
