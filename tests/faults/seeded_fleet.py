"""A seeded random fleet for the fault scenarios, and what the reference model says it must
leave at the receiver.

`plan(seed, ...)` draws a fleet's whole history from one `random.Random(seed)`: how many boots
each device has, how many frames each boot sends, and the way real devices and brokers garble
the stream: QoS 1 resends of a frame (the same bytes again), replays of a frame already sent
with the history flag `h` (after a reconnect, from the device's ring), invalid frames at every
validation stage (undecodable, bad version, wrong type, NaN, an alias the birth did not declare,
a clock a day ahead), some of them later sent again valid with the same seq, frames of one boot
a few places out of order, and every device's stream interleaved at random with the others'.
Births come before their boot's telemetry; the next boot's birth after its predecessor's frames.

The bytes come from the reference model (tests/model/reference.py: msgpack written from
docs/protocol.md, not our codec), and so does the verdict: every message is handed to
`reference.Model` in publish order and the model says which samples must reach the receiver.
Every valid frame carries one `temp_celsius` sample whose value names it,
`device * 1,000,000 + boot * 100,000 + seq`, and one counter sample, so the expected contents of
a receiver are exact per device: `expected` is the set of temperature values the model
committed; `account` in tests/support/receivers.py counts the lost and doubled against it. (A broker
redelivers only what it delivered before, so the order the gateway sees can differ from the
publish order only by such copies, which the model's rules make duplicates.)

`PlanPublisher` publishes a plan at QoS 1 from a thread, at a steady pace, through broker
restarts (paho reconnects and resends; the broker stores what it acknowledged).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass

import tests.support.factories as f
from tests.model import reference
from tests.model.reference import BootSpec, Frame
from tests.support.publisher import Publisher

METRIC = reference.GAUGE  # the model firmware's temperature gauge
SAMPLES_PER_FRAME = 2  # the temperature and the counter
# Defects the gateway refuses whatever its settings (the model's "oversize" depends on
# max_frame_bytes, which the in-process machine lowers; these runs keep the default).
DEFECTS = ("malformed", "version", "wrong_type", "nan", "unknown_alias", "future")

Message = tuple[str, bytes, BootSpec | Frame, int]  # topic, payload, what it is, birth t


def sample_value(device: int, boot: int, seq: int) -> float:
    return float(device * 1_000_000 + boot * 100_000 + seq)


def device_name(device: int) -> str:
    return f"mdev-{device:04d}"


@dataclass(frozen=True)
class FleetPlan:
    seed: int
    messages: list[tuple[str, bytes]]  # in publish order
    expected: dict[str, set[float]]  # device id -> the temperature values it must deliver
    frames: int  # distinct valid telemetry frames (each must arrive once)
    resends: int  # identical copies and `h` replays (each must be dropped)
    invalid: int  # invalid frames (each quarantined, its seq left free)
    boots: int

    @property
    def samples(self) -> int:
        return sum(len(v) for v in self.expected.values())

    def describe(self) -> str:
        return (f"{self.boots} boots, {self.resends} resends/replays, {self.invalid} invalid "
                "frames in the stream")


def _frame(spec: BootSpec, device: int, seq: int, t: int, historical: bool = False,
           defect: str | None = None) -> Frame:
    samples: tuple[reference.RawSample, ...] = (
        (0, sample_value(device, spec.index, seq), 0, ()), (1, float(seq), 0, ()))
    return Frame(spec, seq, t, samples, historical, defect)


def _boot_messages(rng: random.Random, spec: BootSpec, device: int, size: int, t0: int
                   ) -> tuple[list[Message], int, int]:
    """One boot's telemetry: (messages, resends, invalid)."""
    topic = f"fleet/{spec.device}/telemetry"
    out: list[Message] = []
    resends = invalid = 0
    for seq in range(size):
        t = t0 + seq * 1000
        if rng.random() < 0.03:  # invalid first; half the time the seq comes again, valid
            bad = _frame(spec, device, seq, t, defect=rng.choice(DEFECTS))
            out.append((topic, bad.payload(), bad, 0))
            invalid += 1
            if rng.random() < 0.5:
                continue
        frame = _frame(spec, device, seq, t)
        out.append((topic, frame.payload(), frame, 0))
        if rng.random() < 0.05:  # a QoS 1 resend: the same bytes again, a little later
            out.insert(len(out) - rng.randrange(0, 3), out[-1])
            resends += 1
        if seq > 3 and rng.random() < 0.03:  # a replay from the ring, flagged history
            old = rng.randrange(max(0, seq - 20), seq)
            replay = _frame(spec, device, old, t0 + old * 1000, historical=True)
            out.append((topic, replay.payload(), replay, 0))
            resends += 1
    for i in range(len(out) - 1):  # a few neighbours swapped: out of order
        if rng.random() < 0.05:
            out[i], out[i + 1] = out[i + 1], out[i]
    return out, resends, invalid


def _device_stream(rng: random.Random, device: int, frames: int, base_ms: int
                   ) -> tuple[list[Message], int, int, int]:
    """One device's messages: (messages, resends, invalid, boots)."""
    boots = rng.choice((1, 1, 2, 3))
    cuts = sorted(rng.sample(range(1, frames), boots - 1)) if frames > boots else []
    sizes = [b - a for a, b in zip([0, *cuts], [*cuts, frames], strict=True)]
    out: list[Message] = []
    resends = invalid = 0
    t = base_ms + device % 7
    for index, size in enumerate(sizes):
        spec = BootSpec(device_name(device), index, f.boot_id(device, index), t,
                        single_floats=rng.random() < 0.5)
        birth_t = f.now_ms() + index  # the device clock at its birth: about now, later boots later
        out.append((f"fleet/{spec.device}/birth", spec.birth_payload(birth_t), spec, birth_t))
        messages, r, i = _boot_messages(rng, spec, device, size, t)
        out.extend(messages)
        resends, invalid = resends + r, invalid + i
        t += size * 1000
    return out, resends, invalid, boots


def plan(seed: int, devices: int, frames_per_device: int) -> FleetPlan:
    """A fleet history drawn from `seed`; frames_per_device varies +-50 % per device."""
    rng = random.Random(seed)
    base_ms = f.now_ms() - frames_per_device * 2000 - 60_000  # all in the past, 1 s apart
    streams: list[list[Message]] = []
    resends = invalid = boots = 0
    for d in range(devices):
        n = max(2, rng.randint(frames_per_device // 2, frames_per_device * 3 // 2))
        stream, r, i, b = _device_stream(rng, d, n, base_ms)
        streams.append(stream)
        resends, invalid, boots = resends + r, invalid + i, boots + b
    ordered: list[Message] = []
    heads = [0] * devices
    live = list(range(devices))
    while live:  # interleave: each next message from a device chosen at random
        d = rng.choice(live)
        ordered.append(streams[d][heads[d]])
        heads[d] += 1
        if heads[d] == len(streams[d]):
            live.remove(d)
    expected = _model_verdict(ordered)
    frames = sum(len(v) for v in expected.values())
    return FleetPlan(seed, [(topic, payload) for topic, payload, _, _ in ordered], expected,
                     frames, resends, invalid, boots)


def _model_verdict(ordered: list[Message]) -> dict[str, set[float]]:
    """The temperature values per device that the reference model says must be delivered."""
    model = reference.Model(external=())
    for k, (_, payload, what, birth_t) in enumerate(ordered):
        if isinstance(what, BootSpec):
            model.birth(what, birth_t, received_ms=k)
        else:
            model.telemetry(what, payload)
        model.end_batch()
    expected: dict[str, set[float]] = {}
    counts: Counter[tuple[str, float]] = Counter()
    for ((name, labels), value, _ts), n in model.expected.items():
        if name == METRIC:
            device = dict(labels)["device_id"]
            expected.setdefault(device, set()).add(float(value))
            counts[device, float(value)] += n
    assert all(n == 1 for n in counts.values()), "the model committed a sample twice"
    return expected


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
