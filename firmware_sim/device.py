"""One simulated device as its firmware sees itself: a profile's models on the device core.

Pure: no clock, no sockets. The caller passes `now_ms`; the core (`fleetgate_device.core`, the
code the Python SDK runs) keeps the boot, seq, declarations, ring and replay, and says what to
publish. This module adds what only a simulation has: the profile's models and their faults,
the samples-per-frame shaping, an invented-label storm, a skewed clock and malformed payloads.
Deterministic for a given `random.Random` seed, except the boot ids.

Rules it follows (protocol v1), through the core:
- a boot id is a random uint32 drawn at every boot, from the system's entropy and not from the
  seed: a fleet restarted with the same seed is new boots, not a replay of frames the gateway
  has already stored (which it would drop as duplicates); `seq` restarts at 0 and grows by
  one per telemetry frame, whether that frame is sent live or buffered;
- the ring buffer models RAM on a microcontroller: bounded, drops the oldest frame when full
  (counted), and is lost on reboot (counted);
- a replayed frame keeps its boot, seq, time and samples, and is marked `h: true`.
"""

from __future__ import annotations

import random
from typing import Any

from device_protocol import Birth, HistogramValue, RawTelemetry, decode_birth, decode_telemetry
from firmware_sim.profiles import DeviceModel, ModelFault, Profile, Reading
from fleetgate_device import wire
from fleetgate_device.core import DEFAULT_RING_SIZE, DeviceCore, Publish

# A microcontroller keeps a few minutes to an hour of frames in RAM: the core's default, 1000
# frames, at 5 s is about 83 minutes, a plausible outage to ride through.
__all__ = ["CARDINALITY_METRIC", "DEFAULT_RING_SIZE", "SimDevice"]

# What a cardinality attack looks like: firmware that puts a request id into a label.
CARDINALITY_METRIC = "sim_request_latency_ms"

# A power cycle clears a leak; a broken fan, a drifted model or full flash survive it.
_CLEARED_BY_REBOOT = frozenset({ModelFault.MEMORY_LEAK})


class SimDevice:
    """`seq` is the sequence number the next telemetry frame will carry; `core` decides what
    goes on the wire (births, live frames, the ring and its replay)."""

    def __init__(
        self,
        device_id: str,
        profile: Profile,
        rng: random.Random,
        *,
        interval_ms: int,
        ring_size: int = DEFAULT_RING_SIZE,
        samples_per_frame: int | None = None,
        topic_prefix: str = "fleet",
        gateway_id: str | None = None,
        max_in_flight: int = 20,
    ) -> None:
        if samples_per_frame is not None and samples_per_frame <= 0:
            raise ValueError(f"samples_per_frame must be positive, got {samples_per_frame}")
        self.device_id = device_id
        self.profile = profile
        self.interval_ms = interval_ms
        self.samples_per_frame = samples_per_frame
        self.platform = rng.choice(profile.platforms)
        self._natural = profile.natural_samples()
        self._rng = rng
        self.core = DeviceCore(device_id, hw=self.platform, fw=profile.firmware,
                               interval_ms=interval_ms,
                               labels=dict(profile.birth_labels(self.platform)),
                               topic_prefix=topic_prefix, gateway_id=gateway_id,
                               ring_size=ring_size, max_in_flight=max_in_flight)
        self.ring_size = ring_size
        self.reboots = 0
        self.clock_skew_ms = 0  # added to every timestamp the device writes
        self.cardinality_per_frame = 0  # invented label values added to each frame
        self._faults: set[ModelFault] = set()
        self._start_boot()

    def _start_boot(self) -> None:
        for metric in self.profile.metrics:
            alias = self.core.declare(metric.name, metric.type.value, metric.bounds)  # type: ignore[arg-type]
            if alias != metric.alias:
                raise ValueError(f"profile {self.profile.name}: aliases must be 0, 1, ... in "
                                 f"order; {metric.name} has {metric.alias}")
        self._model: DeviceModel = self.profile.new_model(self._rng, self.platform)
        for fault in self._faults:
            self._model.inject(fault)
        self._last_frame_ms: int | None = None

    def reboot(self) -> None:
        """A power cycle: a new boot from seq 0; the RAM ring is lost (counted by the core)."""
        self.core.reboot()
        self.reboots += 1
        self._faults -= _CLEARED_BY_REBOOT
        self._start_boot()

    # --- what the core keeps ----------------------------------------------------------------

    @property
    def boot(self) -> int:
        return self.core.boot

    @property
    def seq(self) -> int:
        return self.core.seq

    @property
    def buffered(self) -> int:
        """Frames waiting in the ring now."""
        return self.core.waiting

    @property
    def dropped(self) -> int:
        return self.core.stats.dropped

    @property
    def lost_on_reboot(self) -> int:
        return self.core.stats.lost_on_reboot

    @property
    def buffered_total(self) -> int:
        return self.core.stats.ringed

    @property
    def replayed_total(self) -> int:
        return self.core.stats.replayed

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
            whole = wire.telemetry_payload(self.boot, self.seq, 1, [])
            return whole[: max(1, len(whole) // 2)]
        if kind == 1:  # valid msgpack, wrong shape: a map without the protocol's keys
            return b"\x81\xa3bad\xc3"
        return bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 48)))

    # --- frames ----------------------------------------------------------------------------

    def birth_payload(self, now_ms: int) -> bytes:
        return self.core.birth(now_ms + self.clock_skew_ms).payload

    def birth(self, now_ms: int) -> Birth:
        return decode_birth(self.birth_payload(now_ms))

    def death_payload(self) -> bytes:
        return self.core.death().payload

    def telemetry(self, now_ms: int) -> list[Publish]:
        """Read the metrics for the time since the previous frame into the boot's next frame
        (one seq); the publishes to make now: the frame, or nothing when it was ringed."""
        return self.core.telemetry_rows(now_ms + self.clock_skew_ms, self.rows(now_ms))

    def next_frame(self, now_ms: int) -> bytes:
        """The next frame's payload as sent live, whatever the connection (tests, benches)."""
        return self.core.frame(now_ms + self.clock_skew_ms, self.rows(now_ms)).payload

    def next_telemetry(self, now_ms: int) -> RawTelemetry:
        return decode_telemetry(self.next_frame(now_ms))

    def rows(self, now_ms: int) -> list[list[Any]]:
        """The samples of a frame built at now_ms, in wire form."""
        span_ms = self.interval_ms
        if self._last_frame_ms is not None and now_ms > self._last_frame_ms:
            span_ms = now_ms - self._last_frame_ms
        self._last_frame_ms = now_ms
        rows = self._model_rows(span_ms)
        if self.cardinality_per_frame:
            rng = self._rng
            rows += [[CARDINALITY_METRIC, round(rng.uniform(1.0, 50.0), 2), 0,
                      {"request_id": f"{rng.getrandbits(32):08x}"}]
                     for _ in range(self.cardinality_per_frame)]
        return rows

    def _model_rows(self, span_ms: int) -> list[list[Any]]:
        """Fill the frame with `samples_per_frame` samples (default: one reading of each).

        More samples than one reading holds are taken as several readings spread over the
        span, oldest first, each series strictly later than in the previous frame. Fewer take
        a window that rotates with `seq`, so every series still shows up over a few frames.
        """
        wanted = self.samples_per_frame
        if wanted is None or wanted == self._natural:
            return [_row(r, 0) for r in self._model.read(span_ms)]
        if wanted < self._natural:
            reading = self._model.read(span_ms)
            start = (self.seq * wanted) % self._natural
            window = (reading + reading)[start : start + wanted]
            return [_row(r, 0) for r in window]
        rounds = -(-wanted // self._natural)  # ceil
        rows = [
            _row(r, -((rounds - 1 - i) * span_ms // rounds))
            for i in range(rounds)
            for r in self._model.read(span_ms // rounds)
        ]
        return rows[-wanted:]


def _row(reading: Reading, dt_ms: int) -> list[Any]:
    value: Any = reading.value
    if type(value) is HistogramValue:
        value = [value.count, value.sum, list(value.buckets)]
    if reading.labels:
        return [reading.metric, value, dt_ms, dict(reading.labels)]
    if dt_ms:
        return [reading.metric, value, dt_ms]
    return [reading.metric, value]
