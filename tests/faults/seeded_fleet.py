"""A seeded random fleet for the fault scenarios, with the exact samples it must leave behind.

`plan(seed, ...)` draws a fleet's whole history from one `random.Random(seed)`: how many boots
each device has, how many frames each boot sends, and the way real devices and brokers garble
the stream: QoS 1 resends of a frame (the same bytes again), replays of a frame already sent
with the history flag `h` (after a reconnect, from the device's ring), frames of one boot a few
places out of order, and every device's stream interleaved at random with the others'. Births
come before their boot's telemetry; the next boot's birth after its predecessor's frames.

Every telemetry frame carries one `device_temperature_celsius` sample whose value names it,
`device * 1,000,000 + boot * 100,000 + seq`, and one counter sample. So the expected contents
of a receiver are exact: each value once per device, whatever the resends and replays (the
gateway's dedup must drop them). `expected` is that set; `account` in tests/receivers.py
counts the lost and doubled against it.

`PlanPublisher` publishes a plan at QoS 1 from a thread, at a steady pace, through broker
restarts (paho reconnects and resends; the broker stores what it acknowledged).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass

import factories as f
from publisher import Publisher

from device_protocol import RawSample, RawTelemetry, encode_birth, encode_telemetry

SAMPLES_PER_FRAME = 2  # the temperature and the counter


def sample_value(device: int, boot: int, seq: int) -> float:
    return float(device * 1_000_000 + boot * 100_000 + seq)


@dataclass(frozen=True)
class FleetPlan:
    seed: int
    messages: list[tuple[str, bytes]]  # in publish order
    expected: dict[str, set[float]]  # device id -> the temperature values it must deliver
    frames: int  # distinct telemetry frames (each must arrive once)
    resends: int  # identical copies and `h` replays (each must be dropped)
    boots: int

    @property
    def samples(self) -> int:
        return sum(len(v) for v in self.expected.values())


def _device_stream(rng: random.Random, device: int, frames: int, base_ms: int,
                   span: int) -> tuple[list[tuple[str, bytes]], set[float], int, int]:
    """One device's messages: (messages, expected values, resends, boots)."""
    boots = rng.choice((1, 1, 2, 3))
    cuts = sorted(rng.sample(range(1, frames), boots - 1)) if frames > boots else []
    sizes = [b - a for a, b in zip([0, *cuts], [*cuts, frames], strict=True)]
    prefix = f"fleet/{f.device_id(device)}"
    out: list[tuple[str, bytes]] = []
    expected: set[float] = set()
    resends = 0
    t = 0
    for boot, size in enumerate(sizes):
        out.append((f"{prefix}/birth",
                    encode_birth(f.birth(device, reboot=boot, time_ms=f.now_ms() + boot))))
        frames_of_boot: list[tuple[str, bytes]] = []
        for seq in range(size):
            value = sample_value(device, boot, seq)
            expected.add(value)
            raw = RawTelemetry(boot=f.boot_id(device, boot), seq=seq,
                               time_ms=base_ms + (device % 7) + t * 1000,
                               samples=(RawSample(0, value, 0, ()),
                                        RawSample(1, float(seq), 0, ())),
                               historical=False)
            t += 1
            frames_of_boot.append((f"{prefix}/telemetry", encode_telemetry(raw)))
            if rng.random() < 0.05:  # a QoS 1 resend: the same bytes again, a little later
                frames_of_boot.insert(len(frames_of_boot) - rng.randrange(0, 3),
                                      frames_of_boot[-1])
                resends += 1
            if seq > 3 and rng.random() < 0.03:  # a replay from the ring, flagged history
                old = rng.randrange(max(0, seq - 20), seq)
                replay = RawTelemetry(boot=raw.boot, seq=old,
                                      time_ms=raw.time_ms - (seq - old) * 1000,
                                      samples=(RawSample(0, sample_value(device, boot, old),
                                                         0, ()),
                                               RawSample(1, float(old), 0, ())),
                                      historical=True)
                frames_of_boot.append((f"{prefix}/telemetry", encode_telemetry(replay)))
                resends += 1
        for i in range(len(frames_of_boot) - 1):  # a few neighbours swapped: out of order
            if rng.random() < 0.05:
                frames_of_boot[i], frames_of_boot[i + 1] = frames_of_boot[i + 1], frames_of_boot[i]
        out.extend(frames_of_boot)
    assert t <= span
    return out, expected, resends, boots


def plan(seed: int, devices: int, frames_per_device: int) -> FleetPlan:
    """A fleet history drawn from `seed`; frames_per_device varies +-50 % per device."""
    rng = random.Random(seed)
    span = frames_per_device * 2
    base_ms = f.now_ms() - span * 1000 - 60_000  # every sample in the past, a second apart
    streams: list[list[tuple[str, bytes]]] = []
    expected: dict[str, set[float]] = {}
    resends = boots = 0
    for d in range(devices):
        n = max(2, rng.randint(frames_per_device // 2, frames_per_device * 3 // 2))
        stream, values, r, b = _device_stream(rng, d, n, base_ms, span)
        streams.append(stream)
        expected[f.device_id(d)] = values
        resends += r
        boots += b
    messages: list[tuple[str, bytes]] = []
    heads = [0] * devices
    live = [d for d in range(devices)]
    while live:  # interleave: each next message from a device chosen at random
        d = rng.choice(live)
        messages.append(streams[d][heads[d]])
        heads[d] += 1
        if heads[d] == len(streams[d]):
            live.remove(d)
    frames = sum(len(v) for v in expected.values())
    return FleetPlan(seed, messages, expected, frames, resends, boots)


class PlanPublisher(threading.Thread):
    """Publishes a plan at QoS 1, `per_round` messages every `round_s`, waiting for each
    round's PUBACKs (from the broker: the gateway's own acks are not the publisher's business)."""

    def __init__(self, mqtt_url: str, fleet: FleetPlan, per_round: int, round_s: float,
                 client_id: str = "seeded-fleet") -> None:
        super().__init__(name="seeded-fleet", daemon=True)
        self.mqtt_url, self.fleet = mqtt_url, fleet
        self.per_round, self.round_s, self.client_id = per_round, round_s, client_id
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with Publisher(self.mqtt_url, client_id=self.client_id) as pub:
                next_round = time.monotonic()
                msgs = self.fleet.messages
                for i in range(0, len(msgs), self.per_round):
                    self.sent += pub.publish(msgs[i:i + self.per_round])
                    next_round += self.round_s
                    # Pacing a publisher is the one place a sleep is the point.
                    time.sleep(max(0.0, next_round - time.monotonic()))
        except BaseException as exc:
            self.error = exc

    def finish(self, timeout: float) -> None:
        self.join(timeout)
        assert not self.is_alive(), f"the fleet did not finish within {timeout:.0f} s"
        assert self.error is None, f"publisher failed: {self.error!r}"
        assert self.sent == len(self.fleet.messages)
