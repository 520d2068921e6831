"""Fleet generator for bench/scale.py: up to 100,000+ devices, in bursts or at their cadence.

bench/loadgen.py pre-encodes every packet of a run; at 100,000 devices x 10 minutes at a 10 s
cadence that would be 6 million packets. Here each device's telemetry PUBLISH is encoded once,
as a template (real device_protocol encoders, values of bench/loadgen.py's sample_value for
seq 0), with placeholder seq and timestamp that msgpack stores in fixed width (seq as a uint32,
0xce + 4 bytes; time as a uint64, 0xcf + 8 bytes). A send joins the template's pieces with the
packet id, seq and time of this frame: no msgpack work on the sending path.

Frames go round-robin over the devices (position p: device p % devices, seq p // devices), so
every device's seq and timestamps rise. Device d always publishes on connection d % connections
(its frames stay in order), QoS 1, at most WINDOW unacknowledged packets per connection (packet
ids 1..65535 are reused round-robin, so one in flight is never reused). PUBACKs are counted.

A frame's timestamp is the time it is written (its publish time), except that each round of the
fleet starts at least 1 ms after the previous round's newest timestamp, so a device's
timestamps rise strictly even when a fast burst sends many rounds within one millisecond.

Protocol on stdin/stdout (JSON events; bench/throughput.py's Child reads them):
  -> {"event": "ready", "build_cpu_s": ...}
  <- "births"                  -> {"event": "acked", "what": "births", ...}
  <- "burst ROUNDS"            every device ROUNDS frames, as fast as the window allows
                               -> {"event": "acked", "what": "burst", ...}
  <- "pace RATE [births]"      frames at RATE per second until the next command ("stop",
                               "dark SPREAD_S" or "silence"); with "births", each device's
                               birth just before its first frame
                               -> {"event": "paced", "sent": ..., "max_lag_s": ...}
  <- "dark SPREAD_S"           ends pacing; one death per device, spread evenly over SPREAD_S
                               -> {"event": "acked", "what": "deaths", ...}
  <- "silence"                 ends pacing; nothing more is sent (devices time out)
  <- "stop" or EOF             exit
Every "acked" event carries sent/acked counts, first/last write epoch, and this process's CPU.
"""

from __future__ import annotations

import argparse
import json
import select
import sys
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from loadgen import (
    MAX_PACKET_ID,
    TOPIC_PREFIX,
    Connection,
    LoadgenError,
    cpu_seconds,
    metric_name,
    publish_qos1,
    sample_value,
)

from device_protocol import (
    Birth,
    Death,
    MetricDef,
    MetricType,
    RawSample,
    RawTelemetry,
    birth_topic,
    death_topic,
    encode_birth,
    encode_death,
    encode_telemetry,
    telemetry_topic,
)

DEVICE_FORMAT = "bench-{:06d}"
BOOT = 1
SEQ_PLACEHOLDER = 0xA5A5_A5A5  # needs msgpack's uint32 form
TIME_PLACEHOLDER = 0x0000_01A5_A5A5_A5A5  # needs msgpack's uint64 form (as bench/pacer.py's)
_S_FIELD = b"\xa1s\xce"  # msgpack: key "s", then a uint32
_T_FIELD = b"\xa1t\xcf"  # msgpack: key "t", then a uint64
WINDOW = 30_000  # most unacknowledged packets per connection (< 65535 packet ids)
CHUNK = 1_000  # frames generated between two socket polls in a burst
TICK_S = 0.005


def device_id(index: int) -> str:
    return DEVICE_FORMAT.format(index)


@dataclass(frozen=True, slots=True)
class FrameTemplate:
    """A device's telemetry PUBLISH cut around its packet id, seq and timestamp."""

    head: bytes  # fixed header, remaining length, topic
    before_seq: bytes  # payload up to the seq's 4 bytes
    before_time: bytes  # from after the seq up to the timestamp's 8 bytes
    tail: bytes  # the samples

    @classmethod
    def build(cls, topic: bytes, payload: bytes) -> FrameTemplate:
        s_at = _only(payload, _S_FIELD + SEQ_PLACEHOLDER.to_bytes(4, "big")) + len(_S_FIELD)
        t_at = _only(payload, _T_FIELD + TIME_PLACEHOLDER.to_bytes(8, "big")) + len(_T_FIELD)
        if not s_at < t_at:
            raise LoadgenError("expected the frame's seq before its timestamp")
        packet = publish_qos1(topic, 1, payload)
        head_len = len(packet) - len(payload) - 2
        return cls(packet[:head_len], payload[:s_at], payload[s_at + 4:t_at], payload[t_at + 8:])

    def packet(self, packet_id: int, seq: int, time_ms: int) -> bytes:
        return b"".join((self.head, packet_id.to_bytes(2, "big"), self.before_seq,
                         seq.to_bytes(4, "big"), self.before_time, time_ms.to_bytes(8, "big"),
                         self.tail))


def _only(data: bytes, needle: bytes) -> int:
    at = data.find(needle)
    if at < 0 or data.find(needle, at + 1) >= 0:
        raise LoadgenError("a placeholder is not in the frame exactly once")
    return at


def telemetry_template(device: int, samples: int) -> FrameTemplate:
    raw = RawTelemetry(boot=BOOT, seq=SEQ_PLACEHOLDER, time_ms=TIME_PLACEHOLDER, historical=False,
                       samples=tuple(RawSample(metric=m, value=sample_value(device, 0, m),
                                               dt_ms=0, labels=()) for m in range(samples)))
    return FrameTemplate.build(telemetry_topic(TOPIC_PREFIX, device_id(device)).encode(),
                               encode_telemetry(raw))


def birth_payload(samples: int, interval_ms: int, time_ms: int) -> bytes:
    metrics = tuple(MetricDef(i, metric_name(i), MetricType.GAUGE) for i in range(samples))
    return encode_birth(Birth(boot=BOOT, time_ms=time_ms, platform="bench", firmware="bench-1",
                              labels=(), interval_ms=interval_ms, metrics=metrics))


def frames_per_device(sent: int, devices: int) -> list[int]:
    """How many frames each device got when `sent` frames went round-robin from device 0."""
    full, extra = divmod(sent, devices)
    return [full + (1 if d < extra else 0) for d in range(devices)]


def due_frames(elapsed_s: float, rate: float) -> int:
    """Frames that should have been written `elapsed_s` after pacing started at `rate`/s."""
    return int(elapsed_s * rate) + 1 if elapsed_s >= 0 else 0


class _Link:
    """One connection: bytes waiting to be written, packets written, PUBACK bytes read."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.out = bytearray()
        self.packets = 0
        self.ack_bytes = 0

    @property
    def unacked(self) -> int:
        return self.packets - self.ack_bytes // 4

    def next_id(self) -> int:
        self.packets += 1
        return (self.packets - 1) % MAX_PACKET_ID + 1

    def flush(self) -> None:
        while self.out:
            try:
                n = self.conn.sock.send(self.out)
            except BlockingIOError:
                return
            del self.out[:n]

    def read_acks(self) -> None:
        while True:
            try:
                data = self.conn.sock.recv(1 << 16)
            except BlockingIOError:
                return
            if not data:
                raise LoadgenError(f"{self.conn.client_id}: broker closed the connection")
            self.ack_bytes += len(data)


class Fleet:
    """The devices' templates, the connections, and where the round-robin stands."""

    def __init__(self, conns: list[Connection], devices: int, samples: int,
                 interval_ms: int) -> None:
        self.links = [_Link(c) for c in conns]
        self.devices = devices
        self.samples = samples
        self.interval_ms = interval_ms
        self.templates = [telemetry_template(d, samples) for d in range(devices)]
        self.position = 0  # telemetry frames generated so far
        self.round_floor_ms = 0  # every timestamp of the current round is at least this
        self.round_max_ms = 0
        self.first_write = 0.0
        self.last_write = 0.0
        self.births_first = False  # each device's birth just before its first frame
        self.birth = b""

    def _link(self, device: int) -> _Link:
        return self.links[device % len(self.links)]

    def _room(self) -> int:
        return min(WINDOW - link.unacked for link in self.links)

    def generate(self, count: int) -> None:
        """Queue the next `count` telemetry frames of the round-robin."""
        now_ms = int(time.time() * 1000)
        devices, templates = self.devices, self.templates
        for p in range(self.position, self.position + count):
            device, seq = p % devices, p // devices
            if device == 0:
                self.round_floor_ms = self.round_max_ms + 1
            ts = max(now_ms, self.round_floor_ms)
            self.round_max_ms = max(self.round_max_ms, ts)
            link = self._link(device)
            if seq == 0 and self.births_first:
                link.out += publish_qos1(birth_topic(TOPIC_PREFIX, device_id(device)).encode(),
                                         link.next_id(), self.birth)
            link.out += templates[device].packet(link.next_id(), seq, ts)
        self.position += count
        self.last_write = time.time()
        self.first_write = self.first_write or self.last_write

    def pump(self, timeout: float) -> None:
        """Write what is queued and read PUBACKs, for at most `timeout` seconds of waiting."""
        socks = [link.conn.sock for link in self.links]
        writers = [link.conn.sock for link in self.links if link.out]
        readable, writable, _ = select.select(socks, writers, [], timeout)
        for link in self.links:
            if link.conn.sock in readable:
                link.read_acks()
            if link.conn.sock in writable:
                link.flush()

    @property
    def packets(self) -> int:
        return sum(link.packets for link in self.links)

    @property
    def acked(self) -> int:
        return sum(link.ack_bytes // 4 for link in self.links)

    def settle(self, timeout_s: float) -> None:
        """Until everything queued is written and acknowledged."""
        deadline = time.monotonic() + timeout_s
        while self.acked < self.packets:
            if time.monotonic() > deadline:
                raise LoadgenError(f"{self.packets - self.acked} PUBACKs missing after "
                                   f"{timeout_s:.0f} s")
            self.pump(0.05)


def _result(fleet: Fleet, what: str, sent: int, cpu0: float, began: float) -> dict[str, Any]:
    return {"event": "acked", "what": what, "sent": sent, "packets": fleet.packets,
            "acked": fleet.acked, "position": fleet.position, "began_epoch": began,
            "done_epoch": time.time(), "cpu_s": cpu_seconds() - cpu0}


def births(fleet: Fleet, timeout_s: float) -> dict[str, Any]:
    cpu0, began = cpu_seconds(), time.time()
    payload = birth_payload(fleet.samples, fleet.interval_ms, int(began * 1000))
    for start in range(0, fleet.devices, CHUNK):  # room for the window, chunk by chunk
        while fleet._room() < CHUNK:
            fleet.pump(0.05)
        for d in range(start, min(start + CHUNK, fleet.devices)):
            link = fleet._link(d)
            link.out += publish_qos1(birth_topic(TOPIC_PREFIX, device_id(d)).encode(),
                                     link.next_id(), payload)
        fleet.pump(0)
    fleet.settle(timeout_s)
    return _result(fleet, "births", fleet.devices, cpu0, began)


def burst(fleet: Fleet, rounds: int, timeout_s: float) -> dict[str, Any]:
    cpu0, began = cpu_seconds(), time.time()
    todo = rounds * fleet.devices
    first = 0.0
    while todo:
        while fleet._room() < CHUNK:
            fleet.pump(0.05)
        n = min(CHUNK, todo)
        fleet.generate(n)
        first = first or fleet.last_write
        todo -= n
        fleet.pump(0)
    fleet.settle(timeout_s)
    out = _result(fleet, "burst", rounds * fleet.devices, cpu0, began)
    return {**out, "first_write_epoch": first, "last_write_epoch": fleet.last_write}


def pace(fleet: Fleet, rate: float, births_first: bool) -> tuple[dict[str, Any], str]:
    """Frames at `rate`/s until a command arrives on stdin; (result, that command). With
    births_first each device's birth goes just before its first frame (a fleet booting at its
    cadence, rather than every birth at once and then silence while the gateway takes them)."""
    cpu0, start = cpu_seconds(), time.time()
    fleet.births_first = births_first
    fleet.birth = birth_payload(fleet.samples, fleet.interval_ms, int(start * 1000))
    sent = 0
    max_lag = 0.0
    window_waits = 0
    stdin = sys.stdin.fileno()
    while True:
        if select.select([stdin], [], [], 0)[0]:
            command = sys.stdin.readline().strip()
            break
        now = time.time()
        due = due_frames(now - start, rate)
        room = fleet._room()
        if due > sent:
            max_lag = max(max_lag, (now - start) - sent / rate)
            n = min(due - sent, max(0, room - 1))
            if n < due - sent:
                window_waits += 1
            if n:
                fleet.generate(n)
                sent += n
        fleet.pump(TICK_S)
    out = {"event": "paced", "rate": rate, "sent": sent, "start_epoch": start,
           "end_epoch": time.time(), "max_lag_s": max_lag, "window_waits": window_waits,
           "position": fleet.position, "cpu_s": cpu_seconds() - cpu0}
    return out, command


def dark(fleet: Fleet, spread_s: float, timeout_s: float) -> dict[str, Any]:
    """One death per device, spread evenly over spread_s seconds."""
    cpu0, began = cpu_seconds(), time.time()
    payload = encode_death(Death(boot=BOOT))
    done = 0
    while done < fleet.devices:
        elapsed = time.time() - began
        due = fleet.devices if spread_s <= 0 else min(
            fleet.devices, due_frames(elapsed, fleet.devices / spread_s))
        due = min(due, done + max(0, fleet._room() - 1))
        for d in range(done, due):
            link = fleet._link(d)
            link.out += publish_qos1(death_topic(TOPIC_PREFIX, device_id(d)).encode(),
                                     link.next_id(), payload)
        done = due
        fleet.pump(TICK_S)
    fleet.settle(timeout_s)
    return _result(fleet, "deaths", fleet.devices, cpu0, began)


def _emit(event: dict[str, Any]) -> None:
    print(json.dumps(event), flush=True)


def serve(fleet: Fleet, timeout_s: float) -> None:
    command = sys.stdin.readline().strip()
    while command not in ("", "stop"):
        word, _, arg = command.partition(" ")
        if word == "births":
            _emit(births(fleet, timeout_s))
        elif word == "burst":
            _emit(burst(fleet, int(arg), timeout_s))
        elif word == "pace":
            rate, _, births_first = arg.partition(" ")
            paced, command = pace(fleet, float(rate), births_first == "births")
            fleet.settle(timeout_s)
            _emit({**paced, "packets": fleet.packets, "acked": fleet.acked})
            continue  # the command that ended pacing
        elif word == "dark":
            _emit(dark(fleet, float(arg), timeout_s))
        elif word == "silence":
            _emit({"event": "silent", "epoch": time.time()})
        else:
            raise LoadgenError(f"unknown command {command!r}")
        command = sys.stdin.readline().strip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mqtt", default="mqtt://127.0.0.1:1883")
    ap.add_argument("--devices", type=int, required=True)
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--interval-ms", type=int, default=10_000,
                    help="the reporting interval the births declare")
    ap.add_argument("--timeout", type=float, default=600, help="most seconds to wait for acks")
    args = ap.parse_args(argv)
    url = urlsplit(args.mqtt)
    cpu0 = cpu_seconds()
    conns = [Connection(url.hostname or "127.0.0.1", url.port or 1883, f"bench-scale-{i}")
             for i in range(args.connections)]
    try:
        fleet = Fleet(conns, args.devices, args.samples, args.interval_ms)
        _emit({"event": "ready", "build_cpu_s": cpu_seconds() - cpu0})
        serve(fleet, args.timeout)
    finally:
        for conn in conns:
            conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
