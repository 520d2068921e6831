"""One simulated device as its firmware sees itself: boot, sequence, metrics, store-and-forward.

Pure: no clock, no sockets. The caller passes `now_ms` and decides what is online; the device
only builds frames and keeps its ring buffer. Deterministic for a given `random.Random` seed.

Rules it follows (protocol v1):
- a boot id is a random uint32 drawn at every boot, from the system's entropy and not from the
  seed: a fleet restarted with the same seed is new boots, not a replay of frames the gateway
  has already stored (which it would drop as duplicates); `seq` restarts at 0 and grows by
  one per telemetry frame, whether that frame is sent live or buffered;
- the ring buffer models RAM on a microcontroller: bounded, drops the oldest frame when full
  (counted), and is lost on reboot (counted);
- a replayed frame keeps its boot, seq, time and samples, and is marked `historical=True`.
"""

from __future__ import annotations

import dataclasses
import random
import secrets
from collections import deque

from device_protocol import (
    Birth,
    Death,
    RawSample,
    RawTelemetry,
    decode_telemetry,
    encode_birth,
    encode_death,
    encode_telemetry,
)
from firmware_sim.profiles import DeviceModel, ModelFault, Profile, Reading

# A microcontroller keeps a few minutes to an hour of frames in RAM: 1000 frames at 5 s is
# about 83 minutes, a plausible outage to ride through.
DEFAULT_RING_SIZE = 1000

# What a cardinality attack looks like: firmware that puts a request id into a label.
CARDINALITY_METRIC = "sim_request_latency_ms"

# A power cycle clears a leak; a broken fan, a drifted model or full flash survive it.
_CLEARED_BY_REBOOT = frozenset({ModelFault.MEMORY_LEAK})


class SimDevice:
    """`seq` is the sequence number the next telemetry frame will carry."""

    def __init__(
        self,
        device_id: str,
        profile: Profile,
        rng: random.Random,
        *,
        interval_ms: int,
        ring_size: int = DEFAULT_RING_SIZE,
        samples_per_frame: int | None = None,
    ) -> None:
        if interval_ms <= 0:
            raise ValueError(f"interval_ms must be positive, got {interval_ms}")
        if ring_size < 0:
            raise ValueError(f"ring_size must be >= 0, got {ring_size}")
        if samples_per_frame is not None and samples_per_frame <= 0:
            raise ValueError(f"samples_per_frame must be positive, got {samples_per_frame}")
        self.device_id = device_id
        self.profile = profile
        self.interval_ms = interval_ms
        self.ring_size = ring_size
        self.samples_per_frame = samples_per_frame
        self.platform = rng.choice(profile.platforms)
        self._natural = profile.natural_samples()
        self._rng = rng
        self._ring: deque[RawTelemetry] = deque()
        self.dropped = 0  # frames pushed out of a full ring
        self.lost_on_reboot = 0  # frames still in the ring when the device rebooted
        self.buffered_total = 0  # frames ever put in the ring
        self.replayed_total = 0  # frames ever drained from the ring
        self.reboots = 0
        self.clock_skew_ms = 0  # added to every timestamp the device writes
        self.cardinality_per_frame = 0  # invented label values added to each frame
        self._faults: set[ModelFault] = set()
        self._start_boot()

    def _start_boot(self) -> None:
        self.boot = secrets.randbits(32)
        self.seq = 0
        self._model: DeviceModel = self.profile.new_model(self._rng, self.platform)
        for fault in self._faults:
            self._model.inject(fault)
        self._last_frame_ms: int | None = None

    def reboot(self) -> None:
        self.lost_on_reboot += len(self._ring)
        self._ring.clear()
        self.reboots += 1
        self._faults -= _CLEARED_BY_REBOOT
        self._start_boot()

    # --- faults ----------------------------------------------------------------------------

    def inject(self, fault: ModelFault) -> None:
        """Start a model fault (ValueError if the profile has no such fault)."""
        self._model.inject(fault)
        self._faults.add(fault)

    @property
    def faults(self) -> frozenset[ModelFault]:
        return frozenset(self._faults)

    def malformed_payload(self) -> bytes:
        """Something a buggy firmware might put on its telemetry topic; consumes no seq."""
        rng = self._rng
        kind = rng.randrange(3)
        if kind == 0:  # a frame cut short, as by a full transmit buffer
            whole = encode_telemetry(RawTelemetry(self.boot, self.seq, 1, (), False))
            return whole[: max(1, len(whole) // 2)]
        if kind == 1:  # valid msgpack, wrong shape: a map without the protocol's keys
            return b"\x81\xa3bad\xc3"
        return bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 48)))

    # --- frames ----------------------------------------------------------------------------

    def birth(self, now_ms: int) -> Birth:
        return Birth(
            boot=self.boot,
            time_ms=now_ms + self.clock_skew_ms,
            platform=self.platform,
            firmware=self.profile.firmware,
            labels=self.profile.birth_labels(self.platform),
            interval_ms=self.interval_ms,
            metrics=self.profile.metrics,
        )

    def birth_payload(self, now_ms: int) -> bytes:
        return encode_birth(self.birth(now_ms))

    def death_payload(self) -> bytes:
        return encode_death(Death(self.boot))

    def next_telemetry(self, now_ms: int) -> RawTelemetry:
        """Read the metrics for the time since the previous frame; consumes one seq."""
        span_ms = self.interval_ms
        if self._last_frame_ms is not None and now_ms > self._last_frame_ms:
            span_ms = now_ms - self._last_frame_ms
        self._last_frame_ms = now_ms
        frame = RawTelemetry(
            boot=self.boot,
            seq=self.seq,
            time_ms=now_ms + self.clock_skew_ms,
            samples=self._samples(span_ms),
            historical=False,
        )
        self.seq += 1
        return frame

    def next_frame(self, now_ms: int) -> bytes:
        return encode_telemetry(self.next_telemetry(now_ms))

    def _samples(self, span_ms: int) -> tuple[RawSample, ...]:
        samples = self._model_samples(span_ms)
        if not self.cardinality_per_frame:
            return samples
        rng = self._rng
        invented = tuple(
            RawSample(CARDINALITY_METRIC, round(rng.uniform(1.0, 50.0), 2), 0,
                      (("request_id", f"{rng.getrandbits(32):08x}"),))
            for _ in range(self.cardinality_per_frame)
        )
        return samples + invented

    def _model_samples(self, span_ms: int) -> tuple[RawSample, ...]:
        """Fill the frame with `samples_per_frame` samples (default: one reading of each).

        More samples than one reading holds are taken as several readings spread over the
        span, oldest first, each series strictly later than in the previous frame. Fewer take
        a window that rotates with `seq`, so every series still shows up over a few frames.
        """
        wanted = self.samples_per_frame
        if wanted is None or wanted == self._natural:
            return tuple(_sample(r, 0) for r in self._model.read(span_ms))
        if wanted < self._natural:
            reading = self._model.read(span_ms)
            start = (self.seq * wanted) % self._natural
            window = (reading + reading)[start : start + wanted]
            return tuple(_sample(r, 0) for r in window)
        rounds = -(-wanted // self._natural)  # ceil
        samples = [
            _sample(r, -((rounds - 1 - i) * span_ms // rounds))
            for i in range(rounds)
            for r in self._model.read(span_ms // rounds)
        ]
        return tuple(samples[-wanted:])

    # --- store and forward -----------------------------------------------------------------

    def buffer(self, frame: RawTelemetry | bytes) -> None:
        """Keep a frame that could not be sent; the oldest is dropped when the ring is full."""
        if isinstance(frame, bytes):
            frame = decode_telemetry(frame)
        self.buffered_total += 1
        if self.ring_size == 0:
            self.dropped += 1
            return
        if len(self._ring) >= self.ring_size:
            self._ring.popleft()
            self.dropped += 1
        self._ring.append(frame)

    @property
    def buffered(self) -> int:
        """Frames waiting in the ring now."""
        return len(self._ring)

    def drain_frames(self, max_n: int) -> list[RawTelemetry]:
        """Take up to `max_n` frames from the ring, oldest first, marked historical."""
        out: list[RawTelemetry] = []
        while self._ring and len(out) < max_n:
            out.append(dataclasses.replace(self._ring.popleft(), historical=True))
        self.replayed_total += len(out)
        return out

    def drain(self, max_n: int) -> list[bytes]:
        return [encode_telemetry(frame) for frame in self.drain_frames(max_n)]


def _sample(reading: Reading, dt_ms: int) -> RawSample:
    return RawSample(metric=reading.metric, value=reading.value, dt_ms=dt_ms, labels=reading.labels)
