"""Paced live publisher: QoS 1 telemetry at a steady rate, each frame stamped with its send time.

For the latency and drain benchmarks, whose question is "how long after a device published a
frame did it reach the receiver?". So the frame's timestamp must be its publish time, yet
encoding frames while publishing would put the encoder on the critical path. Packets are
therefore built before the run (bench/loadgen.py's encoders) with a placeholder timestamp, and
just before each write the 8 bytes of the frame's msgpack `t` field (a uint64: every
millisecond timestamp since 2001 needs more than 32 bits) are overwritten with the current time
in ms. Frames go round-robin over the devices (device i % devices, seq i // devices), so each
device's timestamps rise.

Protocol on stdin/stdout (JSON events, as bench/throughput.py's Child reads them):
  -> {"event": "ready", ...}          packets built, births published and acked
  <- "go"                             start publishing at --rate frames/s
  <- "stop" (or stdin closed)         stop; or it stops by itself after --frames
  -> {"event": "done", "sent": N, "first_ms":..., "last_ms":..., "cpu_s":..., "max_lag_s":...}

max_lag_s is how far sending ever fell behind the schedule (the timestamps are the real send
times either way, so a lagging pacer shows up as a lower rate, never as hidden latency).
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import sys
import time
from typing import Any
from urllib.parse import urlsplit

from loadgen import (
    BOOT,
    MAX_PACKET_ID,
    TOPIC_PREFIX,
    Connection,
    LoadgenError,
    Workload,
    birth_payload,
    cpu_seconds,
    packet_id_for,
    publish_qos1,
    sample_value,
)

from device_protocol import (
    RawSample,
    RawTelemetry,
    birth_topic,
    encode_telemetry,
    telemetry_topic,
)

DEVICE_FORMAT = "live-{:05d}"
# A timestamp that needs msgpack's uint64 form and is unlikely to occur in a payload by chance.
PLACEHOLDER_MS = 0x0000_01A5_A5A5_A5A5
_T_FIELD = b"\xa1t\xcf"  # msgpack: key "t", then a uint64
TICK_S = 0.002
MAX_UNACKED = MAX_PACKET_ID - 1000  # packet ids are reused round-robin


def device_id(index: int) -> str:
    return DEVICE_FORMAT.format(index)


def time_offset(packet: bytes) -> int:
    """Where the 8 bytes of the frame timestamp sit in a PUBLISH packet built with
    PLACEHOLDER_MS."""
    needle = _T_FIELD + PLACEHOLDER_MS.to_bytes(8, "big")
    at = packet.find(needle)
    if at < 0 or packet.find(needle, at + 1) >= 0:
        raise LoadgenError("the placeholder timestamp is not in the packet exactly once")
    return at + len(_T_FIELD)


def stamp(packet: bytearray, offset: int, now_ms: int) -> None:
    packet[offset:offset + 8] = now_ms.to_bytes(8, "big")


def payload(device: int, seq: int, samples: int) -> bytes:
    """A telemetry frame with the placeholder timestamp (values as bench/loadgen.py's)."""
    raw = RawTelemetry(boot=BOOT, seq=seq, time_ms=PLACEHOLDER_MS, historical=False,
                       samples=tuple(RawSample(metric=m, value=sample_value(device, seq, m),
                                               dt_ms=0, labels=()) for m in range(samples)))
    return encode_telemetry(raw)


def build_packets(devices: int, frames: int, samples: int) -> list[tuple[bytearray, int]]:
    """(packet, offset of its timestamp) for frames 0..frames-1, round-robin over devices."""
    topics = [telemetry_topic(TOPIC_PREFIX, device_id(d)).encode() for d in range(devices)]
    out = []
    for i in range(frames):
        device, seq = i % devices, i // devices
        packet = publish_qos1(topics[device], packet_id_for(i), payload(device, seq, samples))
        out.append((bytearray(packet), time_offset(packet)))
    return out


def scheduled(elapsed_s: float, rate: float, total: int) -> int:
    """Frames that should have been sent `elapsed_s` after the start at `rate` per second."""
    return min(total, int(elapsed_s * rate) + 1) if elapsed_s >= 0 else 0


class _Acks:
    """Counts PUBACKs (4 bytes each) on a non-blocking socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.bytes = 0

    def drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                return
            if not data:
                raise LoadgenError("broker closed the connection")
            self.bytes += len(data)

    @property
    def count(self) -> int:
        return self.bytes // 4


def publish_births(conn: Connection, devices: int, samples: int) -> None:
    birth = birth_payload(Workload(devices, 1, samples, int(time.time() * 1000)))
    data = b"".join(publish_qos1(birth_topic(TOPIC_PREFIX, device_id(d)).encode(),
                                 packet_id_for(d), birth) for d in range(devices))
    conn.sock.setblocking(True)
    conn.sock.sendall(data)
    got = 0
    while got < 4 * devices:
        chunk = conn.sock.recv(1 << 16)
        if not chunk:
            raise LoadgenError("broker closed the connection during births")
        got += len(chunk)
    conn.sock.setblocking(False)


def run(conn: Connection, packets: list[tuple[bytearray, int]], rate: float) -> dict[str, Any]:
    acks = _Acks(conn.sock)
    total = len(packets)
    sent = 0
    max_lag = 0.0
    cpu0 = cpu_seconds()
    start = time.time()
    first_ms = last_ms = 0
    stdin = sys.stdin.fileno()
    while sent < total:
        readable, _, _ = select.select([stdin], [], [], TICK_S)
        if readable and sys.stdin.readline().strip() in ("stop", ""):
            break
        acks.drain()
        now = time.time()
        due = scheduled(now - start, rate, total)
        if due - acks.count > MAX_UNACKED:
            due = acks.count + MAX_UNACKED
        if due <= sent:
            continue
        max_lag = max(max_lag, (now - start) - sent / rate)
        now_ms = int(now * 1000)
        batch = []
        for packet, offset in packets[sent:due]:
            stamp(packet, offset, now_ms)
            batch.append(packet)
        first_ms = first_ms or now_ms
        last_ms = now_ms
        conn.sock.setblocking(True)
        conn.sock.sendall(b"".join(batch))
        conn.sock.setblocking(False)
        sent = due
    deadline = time.monotonic() + 30
    while acks.count < sent and time.monotonic() < deadline:
        time.sleep(0.01)
        acks.drain()
    return {"sent": sent, "acked": acks.count, "first_ms": first_ms, "last_ms": last_ms,
            "wall_s": time.time() - start, "cpu_s": cpu_seconds() - cpu0,
            "max_lag_s": max_lag, "boot": BOOT}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mqtt", default="mqtt://127.0.0.1:1883")
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--rate", type=float, required=True, help="frames per second, all devices")
    ap.add_argument("--frames", type=int, required=True, help="most frames to send")
    ap.add_argument("--samples", type=int, default=20)
    args = ap.parse_args(argv)
    url = urlsplit(args.mqtt)
    cpu0 = cpu_seconds()
    packets = build_packets(args.devices, args.frames, args.samples)
    encode_cpu = cpu_seconds() - cpu0
    conn = Connection(url.hostname or "127.0.0.1", url.port or 1883, "bench-pacer")
    try:
        publish_births(conn, args.devices, args.samples)
        print(json.dumps({"event": "ready", "encode_cpu_s": encode_cpu}), flush=True)
        if sys.stdin.readline().strip() != "go":
            return 1
        print(json.dumps({"event": "done", **run(conn, packets, args.rate)}), flush=True)
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
