"""The device core against a small reference model, over random histories.

A history is ticks (a frame of samples, sometimes naming a metric new to the boot), connects,
disconnects, acknowledgements, rebirth commands and gateway states, in any order. Whatever it
is, every frame the core builds is published once live, or replayed once with h=true, or
counted dropped; seqs are contiguous from 0; at most max_in_flight replays await an ack; and
every telemetry payload resolves, with the gateway's codec, under the last birth published
before it (a new declaration comes with a birth first).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from device_protocol import Birth, decode_birth, decode_telemetry, resolve_telemetry
from fleetgate_device import DeviceCore, Publish, Sample

T0 = 1_790_000_000_000
STATE = "fleet/_gateway/gw/state"
NAMES = ("a", "b", "c", "d")

ops = st.lists(st.one_of(
    st.tuples(st.just("tick"), st.sets(st.sampled_from(NAMES), max_size=3)),
    st.tuples(st.just("connect"), st.none()),
    st.tuples(st.just("disconnect"), st.none()),
    st.tuples(st.just("ack"), st.integers(0, 5)),
    st.tuples(st.just("rebirth"), st.none()),
    st.tuples(st.just("gateway"), st.booleans()),
), max_size=60)


class Harness:
    """The transport: publishes kept in order until acknowledged (as paho keeps QoS 1 messages
    across a reconnect), and the gateway side that decodes what arrives."""

    def __init__(self, ring_size: int, max_in_flight: int) -> None:
        self.core = DeviceCore("dev", hw="hw", fw="fw", interval_ms=1000, ring_size=ring_size,
                               max_in_flight=max_in_flight)
        self.unacked: list[Publish] = []
        self.birth: Birth | None = None
        self.live: list[int] = []
        self.replayed: list[int] = []
        self.now = T0

    def publish(self, out: list[Publish]) -> None:
        for p in out:
            if p.topic.endswith("/birth"):
                self.birth = decode_birth(p.payload)
                assert self.birth.boot == self.core.boot
                continue
            assert p.topic.endswith("/telemetry") and p.frame is not None
            raw = decode_telemetry(p.payload)
            assert self.birth is not None, "telemetry before any birth"
            resolve_telemetry(raw, self.birth)  # UnknownAlias if the birth lacks a metric
            assert (raw.boot, raw.seq, raw.historical) == tuple(p.frame)
            (self.replayed if raw.historical else self.live).append(raw.seq)
            self.unacked.append(p)
        assert self.core.in_flight <= self.core.max_in_flight

    def step(self, op: str, arg: object) -> None:
        self.now += 1000
        c = self.core
        if op == "tick":
            samples = [Sample(n, 1.0) for n in sorted(arg)]  # type: ignore[call-overload]
            self.publish(c.telemetry(self.now, samples))
        elif op == "connect" and not c.connected:
            self.publish(c.on_connect(self.now))
        elif op == "disconnect" and c.connected:
            c.on_disconnect()
        elif op == "ack" and self.unacked and c.connected:
            p = self.unacked.pop(min(int(arg), len(self.unacked) - 1))  # type: ignore[call-overload]
            self.publish(c.on_ack(p))
        elif op == "rebirth":
            self.publish(c.on_message("fleet/dev/cmd", b"\x81\xa7rebirth\xc3", self.now))
        elif op == "gateway":
            payload = b"\x81\xa6online\xc3" if arg else b"\x81\xa6online\xc2"
            self.publish(c.on_message(STATE, payload, self.now))


@settings(max_examples=300, deadline=None)
@given(ops, st.integers(0, 4), st.integers(1, 3))
def test_every_frame_once_live_once_replayed_or_dropped(
        history: list[tuple[str, object]], ring_size: int, max_in_flight: int) -> None:
    h = Harness(ring_size, max_in_flight)
    for op, arg in history:
        h.step(op, arg)
    # Settle: the gateway comes (back) online, the device connects, every ack comes back.
    h.step("gateway", True)
    h.step("connect", None)
    while h.unacked:
        h.step("ack", 0)
    c = h.core
    built = c.seq
    assert not set(h.live) & set(h.replayed)
    assert len(h.live) == len(set(h.live)) and len(h.replayed) == len(set(h.replayed))
    assert c.waiting == 0 and c.in_flight == 0
    assert len(h.live) + len(h.replayed) + c.stats.dropped == built
    assert set(h.live) | set(h.replayed) <= set(range(built))
    assert (c.stats.live, c.stats.replayed) == (len(h.live), len(h.replayed))
    assert c.stats.ringed == len(h.replayed) + c.stats.dropped
    # Replays go oldest first; drops are the oldest of the ring, so what is replayed is a
    # sequence that only grows.
    assert h.replayed == sorted(h.replayed)
