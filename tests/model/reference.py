"""A reference model of fleetgate's promise, small enough to be obviously right.

It imports nothing from `gateway/` and no codec of `device_protocol`: frames are built here with
msgpack from docs/protocol.md, and the model decides from its own rules what the gateway must
forward, count and show. The model is told what happened at the two seams (which messages the
broker handed over, which batches committed, what each remote-write request carried and how
the receiver answered, where the gateway crashed) and answers what must be true.

The promise, rule by rule:

1. Delivery. A telemetry frame's samples reach the receiver exactly once iff the frame is valid
   and its boot's birth arrived; a frame whose birth has not arrived is held (stored, acked)
   and decided when the birth comes.
2. The seq rule. A (device, boot, seq) is marked seen only when that frame's samples are
   committed for forwarding. A frame quarantined at any stage (decode, schema, unknown alias,
   clock) leaves its seq unseen, so the same seq sent again valid is delivered. While a boot's
   frames are held, another frame with a held seq is counted as a duplicate when it arrives;
   yet if the held one turns out invalid at the release, a valid later copy is still due.
3. Duplicates. A frame whose seq is committed (a QoS 1 redelivery, a device replay with `h`)
   is dropped and counted as a duplicate. A frame both invalid and a duplicate counts once, by
   the first check it fails: decoding (types, values, size, the clock once its boot's birth
   is known), then the seq, then its birth's declarations (aliases); a held frame is decoded
   and resolved before its seq is checked, at its release.
   A boot whose birth's `t` is more than 5 min ahead of its arrival has a clock ahead by
   that much (measured at its first birth and kept, also across restarts): its samples are
   moved back by it.
4. The current boot. A device's current boot is decided by the births' device clock `t`, then
   arrival: a birth becomes current iff its boot is not known as past and its `t` is at least
   the current boot's newest birth `t`. A birth of a boot already known as past never moves the
   device back (state, firmware, `fleet_device_info`, reboot event). Only a birth that is or
   becomes current stamps `fleet_device_info` (at its arrival). Every birth declares its boot
   for its held and later frames.
5. Counts agree. Per device: received (= committed seqs, the completeness ledger) / stored /
   duplicate / quarantined / missing (gaps between the first and the last committed seq of a
   boot) agree between this model, the API's completeness, the fleet records and their
   `fleet_device_frames_*` families, the `fleetgate_frames_*` registry, and the receiver.
   Durable figures (the ledger, quarantine and dead-letter tables) survive crashes; counters of
   the registry count from the gateway's start; the fleet's records are as of their last
   checkpoint (the machine checkpoints after every step, as the gateway does every 30 s).
6. At-least-once window. Only across a crash between a 2xx and its cursor commit may the
   samples of that one request arrive twice.
7. Refusals. A request refused with a 4xx is dead-lettered whole, counted, never resent;
   5xx/429 are retried until accepted.
8. Buffer cap. Under `block` nothing is lost; under `drop_oldest` exactly the frames counted as
   dropped are missing, whole, and a dropped frame is never delivered.
9. Stale markers. When a device goes offline (death/Will of its current boot, or the offline
   timeout), every series it reported in its current boot gets a stale marker (NaN) after its
   newest sample, also after a gateway restart (series older than the 5 min lookback excepted).
   A label with an empty value is no label: it is left out, the sample kept, and counted.
10. Requests. Within one request the samples of a series are in timestamp order; no request
    carries more than `remote_write_max_samples` samples.
"""

from __future__ import annotations

import math
import struct
from collections import Counter
from dataclasses import dataclass, field

import msgpack

STALE = "stale"  # a stale marker's value in the model (Prometheus's special NaN)
LOOKBACK_MS = 300_000
MAX_SKEW_MS = 300_000  # a birth this far ahead of the gateway's clock measures a clock error
# A sample as the receiver holds it: (name, sorted labels without __name__, value, ts). The
# `le` label is kept as the float it denotes (its text is checked on its own, rule of
# finding 4), so a formatting change does not hide or invent a sample.
SeriesKey = tuple[str, tuple[tuple[str, str], ...]]
Sample = tuple[SeriesKey, float | str, int]

# ------------------------------------------------------------------ the devices' firmware
GAUGE, COUNTER, HIST, EXTRA = "temp_celsius", "frames_total", "latency_seconds", "extra_gauge"
BOUNDS64 = (0.25, 1.0)
BOUNDS32 = (0.005, 0.1)  # sent as float32 by boot 1's firmware


def f32(x: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


def shortest_at_f32(x: float) -> float:
    """The shortest decimal that round-trips to x at float32 precision, as a float."""
    for digits in range(1, 10):
        text = f"{x:.{digits}g}"
        if f32(float(text)) == f32(x):
            return float(text)
    return x


@dataclass(frozen=True)
class BootSpec:
    device: str
    index: int  # 0, 1, 2: later boots have later clocks
    boot: int  # the uint32 on the wire
    t0: int  # device clock at its first birth
    single_floats: bool  # bounds sent as float32

    @property
    def fw(self) -> str:
        return f"fw-{self.index}"

    def bounds(self) -> tuple[float, ...]:
        return tuple(f32(b) for b in BOUNDS32) if self.single_floats else BOUNDS64

    def le_values(self) -> tuple[float, ...]:
        """What each `le` must denote: the bound as the device wrote it (shortest decimal)."""
        return tuple(shortest_at_f32(b) for b in BOUNDS32) if self.single_floats else BOUNDS64

    def birth_payload(self, t: int) -> bytes:
        metrics = [[0, GAUGE, "gauge"], [1, COUNTER, "counter"],
                   [2, HIST, "histogram", list(self.bounds())]]
        body = {"v": 1, "b": self.boot, "t": t, "hw": "model-hw", "fw": self.fw,
                "labels": {"site": f"s{self.index}"}, "interval": 60_000, "metrics": metrics}
        return bytes(msgpack.packb(body, use_single_float=self.single_floats))


# A sample as generated: (metric, value, dt_ms, own labels). metric: alias int or a name.
RawSample = tuple[int | str, object, int, tuple[tuple[str, str], ...]]
DECODE_DEFECTS = ("malformed", "version", "wrong_type", "nan", "oversize")  # no birth needed
BIRTH_DEFECTS = ("unknown_alias", "future")  # decided against the boot's birth
OVERSIZE_PAD = 9000  # the machine's max_frame_bytes is smaller


@dataclass(frozen=True)
class Frame:
    boot: BootSpec
    seq: int
    t: int
    samples: tuple[RawSample, ...]
    historical: bool = False
    defect: str | None = None

    def payload(self) -> bytes:
        m: list[list[object]] = []
        for metric, value, dt, labels in self.samples:
            m.append([metric, value, dt, dict(labels)] if labels else [metric, value, dt])
        body: dict[str, object] = {"v": 1, "b": self.boot.boot, "s": self.seq, "t": self.t,
                                   "m": m}
        if self.historical:
            body["h"] = True
        d = self.defect
        if d == "version":
            body["v"] = 2
        elif d == "wrong_type":
            m.append([0, "hot"])
        elif d == "nan":
            m.append([0, math.nan])
        elif d == "unknown_alias":
            m.append([7, 1.0])
        elif d == "future":  # a frame's time is checked through its samples' times
            body["t"] = self.t + 86_400_000
            m.append([0, 1.5])
        elif d == "oversize":
            body["pad"] = "x" * OVERSIZE_PAD
        packed = bytes(msgpack.packb(body))
        return packed[:-3] if d == "malformed" else packed

    def series_samples(self, external: tuple[tuple[str, str], ...]) -> list[Sample]:
        """The samples this frame must put on the receiver (docs/protocol.md, Series produced)."""
        base = {"device_id": self.boot.device, "site": f"s{self.boot.index}", **dict(external)}
        out: list[Sample] = []
        for metric, value, dt, own in self.samples:
            ts = self.t + dt
            # {k=""} is no label k: left out, the sample kept (and counted)
            labels = {**base, **{k: v for k, v in own if v}}
            if metric == 2:
                count, total, buckets = value  # type: ignore[misc]
                for le, c in zip((*self.boot.le_values(), math.inf), (*buckets, count),
                                 strict=True):
                    out.append((series(HIST + "_bucket", {**labels, "le": le}), float(c), ts))
                out.append((series(HIST + "_sum", labels), float(total), ts))
                out.append((series(HIST + "_count", labels), float(count), ts))
            else:
                name = {0: GAUGE, 1: COUNTER}.get(metric, metric)  # type: ignore[call-overload]
                out.append((series(str(name), labels), float(value), ts))  # type: ignore[arg-type]
        return out


def series(name: str, labels: dict[str, object]) -> SeriesKey:
    return name, tuple(sorted((k, repr(float(v)) if k == "le" else str(v))
                              for k, v in labels.items()))


def receiver_key(labels: dict[str, str]) -> SeriesKey:
    """A series as the receiver decoded it, in the model's terms (le as the float it says)."""
    own = {k: v for k, v in labels.items() if k != "__name__"}
    if "le" in own:
        own["le"] = float(own["le"].replace("+Inf", "inf"))  # type: ignore[assignment]
    return series(labels.get("__name__", ""), own)  # type: ignore[arg-type]


# ------------------------------------------------------------------ the model's state
@dataclass
class Device:
    """The fleet's view of a device (volatile: as of its last checkpoint after a crash)."""

    current: BootSpec | None = None
    online: bool = False
    known: bool = False  # the gateway has a record of it (a birth or a committed frame)
    # volatile (as of the fleet's last checkpoint after a crash):
    frames: int = 0
    quarantined: int = 0
    duplicates: dict[int, int] = field(default_factory=dict)
    reboots: int = 0


@dataclass
class Held:
    frame: Frame
    payload: bytes
    shadow: bool = False  # another frame with a seq already held: counted as a duplicate


@dataclass
class Counts:
    """The registry's counters since the gateway's (re)start."""

    received: Counter[str] = field(default_factory=Counter)
    stored_telemetry: int = 0
    labels_dropped: int = 0
    births_current: int = 0
    births_other: int = 0
    duplicates: int = 0
    invalid: int = 0


class Model:
    def __init__(self, external: tuple[tuple[str, str], ...]) -> None:
        self.external = external
        self.births: dict[tuple[str, int], BootSpec] = {}  # births committed (durable)
        self.ahead: dict[tuple[str, int], int] = {}  # clock-ahead ms, as of the boot's birth
        # device -> (current boot, its order (t, arrival ms)): decided by births, durable
        self.current: dict[str, tuple[int, tuple[int, int]]] = {}
        # (device, {series: newest ts}) that must get stale markers (rule 9)
        self.markers_due: list[tuple[str, dict[SeriesKey, int]]] = []
        self.seen: dict[tuple[str, int], set[int]] = {}  # committed seqs (durable)
        self.held: dict[tuple[str, int], list[Held]] = {}  # durable
        self.devices: dict[str, Device] = {}
        self.quarantined_total = 0  # rows of the quarantine table (durable)
        self.expected: Counter[Sample] = Counter()  # committed, not (yet) dropped
        self.frames: list[Counter[Sample]] = []  # each committed frame's samples
        self.dropped_frames = 0
        self.invisible_frames = 0  # committed frames with no sample: a drop cannot be seen
        self.series_of_boot: dict[tuple[str, int], dict[SeriesKey, int]] = {}  # newest ts
        self.counts = Counts()
        self._checkpoint: dict[str, Device] = {}
        self._batch_quarantined: Counter[str] = Counter()
        self._batch_duplicates: Counter[tuple[str, int]] = Counter()
        self.went_offline: list[str] = []  # since the last lifecycle pass
        self.deaths = 0  # deaths handed over, all incarnations
        self.copies_of_held_due = True  # rule 2's last clause (False: explore past it)

    def end_batch(self) -> None:
        """The fleet counts a device's quarantined frames once the batch is applied, for
        devices it knows by then."""
        for device, count in self._batch_quarantined.items():
            dev = self.devices.get(device)
            if dev is not None and dev.known:
                dev.quarantined += count
        for (device, boot), count in self._batch_duplicates.items():
            dev = self.devices.get(device)
            if dev is not None and dev.known:
                dev.duplicates[boot] = dev.duplicates.get(boot, 0) + count
        self._batch_quarantined.clear()
        self._batch_duplicates.clear()

    # ---------------------------------------------------------------- ingest
    def device(self, name: str) -> Device:
        return self.devices.setdefault(name, Device())

    def birth(self, spec: BootSpec, t: int, received_ms: int) -> None:
        self.counts.received["birth"] += 1
        self.births[spec.device, spec.boot] = spec
        if (spec.device, spec.boot) not in self.ahead:  # measured at the boot's first birth
            ahead = t - received_ms
            self.ahead[spec.device, spec.boot] = ahead if ahead > MAX_SKEW_MS else 0
        current = self.current.get(spec.device)
        order = (t, received_ms)
        if current is None or current[0] == spec.boot or order >= current[1]:
            if current is not None and current[0] == spec.boot:
                order = max(order, current[1])
            elif current is not None:  # a reboot: the boot before it is closed (rule 9)
                self.markers_due.append(
                    (spec.device, self.stale_due(spec.device, current[0], received_ms)))
            self.current[spec.device] = (spec.boot, order)
            self._take_current(spec, received_ms)
        else:
            self.counts.births_other += 1
            self.invisible_frames += 1
        self._release(spec)

    def _take_current(self, spec: BootSpec, received_ms: int) -> None:
        dev = self.device(spec.device)
        if dev.current is not None and dev.current.boot != spec.boot:
            dev.reboots += 1
        dev.current, dev.online, dev.known = spec, True, True
        self.counts.births_current += 1
        info = {"device_id": spec.device, "platform": "model-hw", "firmware": spec.fw,
                "site": f"s{spec.index}", **dict(self.external)}
        self._commit(Counter([(series("fleet_device_info", info), 1.0, received_ms)]))

    def _release(self, spec: BootSpec) -> None:
        key = (spec.device, spec.boot)
        waiting = self.held.pop(key, [])
        for held in sorted(waiting, key=lambda h: h.frame.seq):  # stable: arrival order
            if held.shadow:  # counted as a duplicate; still due if no valid copy came first
                if (self.copies_of_held_due and held.frame.defect is None
                        and held.frame.seq not in self.seen.get(key, ())):
                    self._decide(held.frame, spec)
                continue
            self._decide(held.frame, spec)

    def telemetry(self, frame: Frame, payload: bytes) -> None:
        self.counts.received["telemetry"] += 1
        device = frame.boot.device
        if frame.defect in DECODE_DEFECTS:
            self._quarantine(device)
            return
        key = (device, frame.boot.boot)
        spec = self.births.get(key)
        if spec is not None and frame.defect == "future":  # decoding checks the clock
            self._quarantine(device)
            return
        if frame.seq in self.seen.get(key, ()):
            self._duplicate(device, frame.boot.boot)
            return
        if spec is None:
            held = self.held.setdefault(key, [])
            if any(h.frame.seq == frame.seq for h in held):
                self._duplicate(device, frame.boot.boot)
                if all(h.payload != payload for h in held):
                    held.append(Held(frame, payload, shadow=True))
            else:
                held.append(Held(frame, payload))
            return
        self._decide(frame, spec)

    def _decide(self, frame: Frame, spec: BootSpec) -> None:
        device, key = spec.device, (spec.device, spec.boot)
        if frame.defect is not None:
            self._quarantine(device)
            return
        seen = self.seen.setdefault(key, set())
        if frame.seq in seen:
            self._duplicate(device, spec.boot)
            return
        seen.add(frame.seq)
        shift = self.ahead.get(key, 0)
        samples = [(k, v, ts - shift) for k, v, ts in frame.series_samples(self.external)]
        self._commit(Counter(samples))
        self.invisible_frames += not samples
        self.counts.labels_dropped += sum(1 for *_, own in frame.samples for _, v in own if not v)
        newest = self.series_of_boot.setdefault(key, {})
        for key_, _value, ts in samples:
            newest[key_] = max(newest.get(key_, ts), ts)
        dev = self.device(device)
        dev.known, dev.online = True, True
        dev.frames += 1
        self.counts.stored_telemetry += 1

    def _commit(self, samples: Counter[Sample]) -> None:
        self.frames.append(samples)
        self.expected.update(samples)

    def _quarantine(self, device: str) -> None:
        self.quarantined_total += 1
        self.counts.invalid += 1
        self._batch_quarantined[device] += 1

    def _duplicate(self, device: str, boot: int) -> None:
        self.counts.duplicates += 1
        self._batch_duplicates[device, boot] += 1

    def bad_birth(self, device: str) -> None:
        """A birth that does not decode: quarantined, nothing else changes."""
        self.counts.received["birth"] += 1
        self._quarantine(device)

    def death(self, device: str, boot: int, now_ms: int = 0) -> bool:
        """True if the device goes offline now (a death of its current boot). The boot's
        series get their stale markers with the death (rule 9)."""
        self.counts.received["death"] += 1
        self.deaths += 1
        dev = self.devices.get(device)
        current = self.current.get(device)
        if dev is None or not dev.known or current is None or current[0] != boot:
            return False
        self.markers_due.append((device, self.stale_due(device, boot, now_ms)))
        was, dev.online = dev.online, False
        return was

    def timeout(self) -> list[str]:
        """The offline timeout: every online device goes offline."""
        gone = [name for name, dev in self.devices.items() if dev.known and dev.online]
        for name in gone:
            self.devices[name].online = False
        self.went_offline += gone
        return gone

    def stale_due(self, device: str, boot: int, now_ms: int) -> dict[SeriesKey, int]:
        """Series of the boot that must get a stale marker after their newest ts (rule 9)."""
        newest = self.series_of_boot.get((device, boot), {})
        return {k: ts for k, ts in newest.items() if ts >= now_ms - LOOKBACK_MS}

    def lifecycle(self, now_ms: int) -> None:
        """The lifecycle pass: devices that timed out get their markers due."""
        for device in self.went_offline:
            current = self.current.get(device)
            if current is not None and not self.devices[device].online:
                self.markers_due.append((device, self.stale_due(device, current[0], now_ms)))
        self.went_offline = []

    # ---------------------------------------------------------------- crash and checkpoints
    def checkpoint(self) -> None:
        self._checkpoint = {name: _copy(dev) for name, dev in self.devices.items()}

    def crash(self) -> None:
        """What a kill loses: the fleet's view since its checkpoint (the broker redelivers what
        was not acked, which brings it back), the registry, the lifecycle's pending work."""
        self.devices = {name: _copy(dev) for name, dev in self._checkpoint.items()}
        self.counts = Counts()
        self.went_offline = []
        self._batch_quarantined.clear()
        self._batch_duplicates.clear()

    # ---------------------------------------------------------------- completeness
    def completeness(self, device: str, boot: int) -> tuple[int, int]:
        """(received, missing) of a boot: committed seqs, gaps between first and last."""
        seen = self.seen.get((device, boot), set())
        if not seen:
            return 0, 0
        return len(seen), max(seen) - min(seen) + 1 - len(seen)

    def held_count(self) -> int:
        """Frames waiting for their birth, a shadow copy too (it is kept, and takes room)."""
        return sum(len(v) for v in self.held.values())

    def drop(self, frame: Counter[Sample]) -> None:
        self.expected.subtract(frame)
        self.expected = +self.expected
        self.dropped_frames += 1


def _copy(dev: Device) -> Device:
    return Device(current=dev.current, online=dev.online, known=dev.known, frames=dev.frames,
                  quarantined=dev.quarantined, duplicates=dict(dev.duplicates),
                  reboots=dev.reboots)
