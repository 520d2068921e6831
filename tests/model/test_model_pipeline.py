"""The real gateway against the reference model (tests/model/reference.py), under histories
Hypothesis generates: births of current, past and future boots (redelivered too), telemetry
valid and invalid at every stage, duplicated, replayed with `h`, out of order; deaths and Wills;
crashes between commit and ack, in a request before and after its 2xx, and at rest; receivers
that accept, answer 5xx/429, or refuse with 400; a buffer at its cap under both policies.

The gateway is the real `Gateway` wiring (pipeline, SQLite file, forwarder, fleet, lifecycle)
with fakes only at MQTT and remote-write (seams.py). Each step is run to its end on the
machine's own event loop, then every figure is checked against the model. A difference fails
with the shortest history Hypothesis finds. FAULTS_LONG=1 runs many more histories; the number
of histories and steps checked is appended to var/model-runs.log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import msgpack
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import note as hypothesis_note
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from gateway.ingest.inbox import InboundMessage

from . import checks
from .node import Node, abandon, start
from .node import settings as node_settings
from .reference import (
    BIRTH_DEFECTS,
    DECODE_DEFECTS,
    BootSpec,
    Frame,
    Model,
    RawSample,
)
from .seams import BrokerSide, Crash, Receiver

T = TypeVar("T")


def note(text: str) -> None:
    """A line of the failing history (the machine's steps also run outside Hypothesis, in
    test_model_findings.py)."""
    if currently_in_test_context():
        hypothesis_note(text)

LONG = os.environ.get("FAULTS_LONG") == "1"
pytestmark = pytest.mark.timeout(7200 if LONG else 900)  # shrinking a failure takes a while
DEVICES = ("dev-a", "dev-b")
MAX_SAMPLES = 5  # remote_write_max_samples: a frame of histograms is larger
CAP_BYTES = 400
DAY_MS = 86_400_000  # buffer_max_bytes when the history runs at the cap
EXTERNAL = {"gw": "model"}
RUNS_LOG = Path(__file__).resolve().parents[2] / "var" / "model-runs.log"  # gitignored
STATS = checks.STATS


@dataclass
class Message:
    kind: str
    topic: str
    payload: bytes
    apply: Callable[[Model, int], None]  # the model's view of it, given its arrival ms
    label: str


# One sample per (kind, dt) in a frame: two samples of a series at one time are a conflict
SAMPLE_KINDS = st.lists(st.tuples(st.sampled_from("gchxe"), st.sampled_from((-50, 0, 50))),
                        max_size=4, unique=True)
DEFECTS = st.one_of(st.none(), st.none(), st.sampled_from(DECODE_DEFECTS + BIRTH_DEFECTS))
SCRIPTS = st.sampled_from((("ok",), ("ok",), ("ok",), ("503", "ok"), ("429", "503"), ("400",),
                           ("ok", "400"), ("crash_stored",), ("crash_lost",),
                           ("ok", "crash_stored")))


class GatewayMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = Path(tempfile.mkdtemp(prefix="fleetgate-model-"))
        self.node: Node | None = None
        STATS["histories"] += 1

    # ---------------------------------------------------------------- set-up and helpers
    @initialize(policy=st.sampled_from(("block", "drop_oldest")), capped=st.booleans(),
                n_born=st.integers(0, len(DEVICES)), warm=st.integers(0, 3))
    def boot_gateway(self, policy: str, capped: bool, n_born: int, warm: int = 0) -> None:
        if policy == "block" and "held-block" in checks.KNOWN:
            capped = False  # exploring past the known deadlock at the cap
        self.policy, self.capped = policy, capped
        self.config = node_settings(self.dir, max_samples=MAX_SAMPLES,
                                    cap=CAP_BYTES if capped else 10**9, policy=policy,
                                    external=EXTERNAL)
        self.broker, self.receiver = BrokerSide(), Receiver()
        self.model = Model(tuple(sorted(EXTERNAL.items())))
        self.model.copies_of_held_due = "held-copy-lost" not in checks.KNOWN
        now = int(time.time() * 1000)
        self.last_ms = now
        self.boots = {(d, i): BootSpec(d, i, 1000 + 100 * n + 7 * i, now - 120_000 + 20_000 * i,
                                       single_floats=i == 1)
                      for n, d in enumerate(DEVICES) for i in range(3)}
        # dev-b's last boot has a clock a day ahead (no SNTP): the gateway moves it back
        if "ahead-remeasure" not in checks.KNOWN:
            self.boots["dev-b", 2] = BootSpec("dev-b", 2, self.boots["dev-b", 2].boot,
                                              now + DAY_MS, single_floats=False)
        self.birth_sends: Counter[tuple[str, int]] = Counter()
        self.pending: list[Message] = []  # at the broker, not acknowledged
        self.sent: list[Message] = []  # what the devices published, for redeliveries
        self.value = 0
        self.state = checks.CheckState()
        self.node = self.run(start(self.config, self.broker, self.receiver))
        self.model.checkpoint()
        for d in DEVICES[:n_born]:  # a fleet already running, or not
            self.birth(d, 0, rebirth=False)
            self.telemetry(d, 0, 0, False, None, [("g", 0), ("h", 0), ("x", 0)], warm)
        if n_born:
            self.deliver(len(self.pending), crash_at_ack=False)

    def run(self, coro: Awaitable[T]) -> T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        if self.node is not None:
            self.run(abandon(self.node, []))
        self.loop.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def publish(self, kind: str, device: str, payload: bytes,
                apply: Callable[[Model, int], None], label: str) -> None:
        STATS["device messages"] += 1
        message = Message(kind, f"fleet/{device}/{kind}", payload, apply, label)
        self.pending.append(message)
        self.sent.append(message)

    def next_value(self) -> int:
        self.value += 1
        return self.value

    # ---------------------------------------------------------------- what devices send
    @rule(d=st.sampled_from(DEVICES), i=st.integers(0, 2), rebirth=st.booleans())
    def birth(self, d: str, i: int, rebirth: bool) -> None:
        spec = self.boots[d, i]
        self.birth_sends[d, i] += rebirth
        t = spec.t0 + 10 * self.birth_sends[d, i]
        self.publish("birth", d, spec.birth_payload(t),
                     lambda m, ms: m.birth(spec, t, ms), f"birth {d} boot#{i} t+{t - spec.t0}")

    @rule(d=st.sampled_from(DEVICES))
    def bad_birth(self, d: str) -> None:
        self.publish("birth", d, b"\x85\xa1v\x01", lambda m, ms: m.bad_birth(d),
                     f"bad birth {d}")

    @rule(d=st.sampled_from(DEVICES), i=st.integers(0, 2), seq=st.integers(0, 6),
          h=st.booleans(), defect=DEFECTS, kinds=SAMPLE_KINDS, more=st.integers(0, 4))
    def telemetry(self, d: str, i: int, seq: int, h: bool, defect: str | None,
                  kinds: list[tuple[str, int]], more: int) -> None:
        """A frame, then `more` valid ones with the next seqs."""
        self.frame(d, i, seq, h, defect, kinds)
        for n in range(1, more + 1):
            self.frame(d, i, seq + n, h, None, kinds)

    @rule(d=st.sampled_from(DEVICES), i=st.integers(0, 2), seq=st.integers(0, 6),
          kinds=SAMPLE_KINDS, more=st.integers(0, 4))
    def live_telemetry(self, d: str, i: int, seq: int, kinds: list[tuple[str, int]],
                       more: int) -> None:
        """Valid live frames: as often as all the other kinds together."""
        self.telemetry(d, i, seq, False, None, kinds, more)

    def frame(self, d: str, i: int, seq: int, h: bool, defect: str | None,
              kinds: list[tuple[str, int]]) -> None:
        spec = self.boots[d, i]
        samples = tuple(self.sample(kind, dt) for kind, dt in kinds)
        frame = Frame(spec, seq, spec.t0 + 1000 + 100 * seq, samples, h, defect)
        payload = frame.payload()
        self.publish("telemetry", d, payload, lambda m, ms: m.telemetry(frame, payload),
                     f"telemetry {d} boot#{i} seq {seq}{' h' if h else ''} "
                     f"{defect or 'valid'} {[k for k, _ in kinds]}")

    def sample(self, kind: str, dt: int) -> RawSample:
        n = self.next_value()
        if kind == "g":
            return 0, n + 0.5, dt, ()
        if kind == "c":
            return 1, n, dt, ()
        if kind == "h":
            return 2, [n, n * 0.25, [n // 3, n // 2]], dt, ()
        if kind == "e":  # an empty label value: the label is left out, the sample kept
            return "extra_gauge", n + 0.75, dt, (("k", ""),)
        return "extra_gauge", n + 0.25, dt, (("k", "ab"[n % 2]),)

    @rule(d=st.sampled_from(DEVICES), i=st.integers(0, 2))
    def death(self, d: str, i: int) -> None:
        boot = self.boots[d, i].boot
        self.publish("death", d, bytes(msgpack.packb({"v": 1, "b": boot})),
                     lambda m, ms: m.death(d, boot, ms) and None, f"death/Will {d} boot#{i}")

    @precondition(lambda self: bool(self.sent))
    @rule(data=st.data())
    def redeliver(self, data: st.DataObject) -> None:
        """The broker hands over a message again (QoS 1 redelivery, a replay after restart)."""
        message = data.draw(st.sampled_from(self.sent), label="again")
        self.pending.append(message)

    # ---------------------------------------------------------------- what the gateway does
    @precondition(lambda self: bool(self.pending))
    @rule(k=st.integers(1, 8), crash_at_ack=st.sampled_from((False, False, False, True)),
          same_ms=st.booleans())
    def deliver(self, k: int, crash_at_ack: bool, same_ms: bool = False) -> None:
        """The broker hands over the first k messages; one group commit. same_ms: they all
        arrive in the same millisecond (a death and the next boot's birth, finding 5)."""
        batch = self.pending[:k]
        first = self.stamp()
        stamped = [(m, first if same_ms or n == 0 else self.stamp()) for n, m in enumerate(batch)]
        note(f"deliver {[m.label for m in batch]}{' in one ms' * same_ms}"
             f"{' then crash before the acks' * crash_at_ack}")
        assert self.node is not None
        messages = [InboundMessage(m.topic, m.payload, n, 1, 1, ms)
                    for n, (m, ms) in enumerate(stamped, 1)]
        self.broker.crash_at_ack = crash_at_ack
        committed, crashed = self.ingest(self.node.pipeline.handle(messages))
        if committed:
            for message, ms in stamped:
                message.apply(self.model, ms)
            self.model.end_batch()
            if not crashed:
                del self.pending[:k]
        STATS["messages committed"] += len(batch) if committed else 0
        if crashed:
            STATS["crashes before the acks"] += committed
            self.crash_restart()
        self.after_step()

    @precondition(lambda self: bool(self.pending))
    @rule(k=st.integers(1, 8))
    def deliver_acked(self, k: int) -> None:
        self.deliver(k, crash_at_ack=False)

    def stamp(self) -> int:
        self.last_ms = max(int(time.time() * 1000), self.last_ms + 1)
        return self.last_ms

    def ingest(self, coro: Awaitable[Any]) -> tuple[bool, bool]:
        """Run an ingest coroutine; a full buffer under `block` waits for the forwarder, which
        is then run beside it. Returns (committed, crashed)."""
        return self.run(self._ingest(coro))

    async def _ingest(self, coro: Awaitable[Any]) -> tuple[bool, bool]:
        assert self.node is not None
        blocked = asyncio.Event()
        self.node.metrics.buffer_full_waits = SignalOnInc(  # type: ignore[assignment]
            self.node.metrics.buffer_full_waits, blocked)
        task = asyncio.ensure_future(coro)
        waiter = asyncio.ensure_future(blocked.wait())
        await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if not task.done():  # blocked on the cap: the forwarder frees room
            STATS["ingest waited at the cap"] += 1
            if await self._drain() is False:
                await abandon_task(task)
                return False, True
            await asyncio.wait([task], timeout=0.5)  # (Crash, if any, is raised below)
            assert task.done(), ("ingest still blocked at the cap after the forwarder sent "
                                 "everything it could (buffer_bytes "
                                 f"{self.node.buffer.bytes}, held "
                                 f"{self.model.held_count()})")
        try:
            await task
        except Crash:
            return True, True
        return True, False

    async def _drain(self) -> bool:
        """Forward until caught up; False if the gateway crashed in a request."""
        assert self.node is not None
        forwarder = self.node.forwarders[0]
        forwarder.begin_drain()
        before = len(self.receiver.requests)
        try:
            await asyncio.wait_for(forwarder.run(), 10)
        except Crash:
            last = self.receiver.requests[-1]
            STATS[f"crash in a request ({last.outcome})"] += 1
            if last.outcome == "crash_stored":
                self.state.allowed_twice.update(last.samples)
            return False
        finally:
            STATS["requests"] += len(self.receiver.requests) - before
        return True

    @rule(script=SCRIPTS)
    def forward(self, script: tuple[str, ...]) -> None:
        note(f"forward; the receiver answers {script} then 204")
        self.receiver.script.extend(script)
        drained = self.run(self._drain())
        self.receiver.script.clear()
        if not drained:
            self.crash_restart()
        else:
            self.state.full_drain = True
        self.after_step()

    @precondition(lambda self: self.policy == "drop_oldest" and self.capped
                  and bool(self.pending))
    @rule(k=st.integers(1, 3))
    def ingest_while_a_request_is_in_flight(self, k: int) -> None:
        note(f"deliver {[m.label for m in self.pending[:k]]} while a request is in flight")
        self.run(self._ingest_in_flight(k))
        self.state.full_drain = True
        self.after_step()

    async def _ingest_in_flight(self, k: int) -> None:
        assert self.node is not None
        batch = self.pending[:k]
        stamped = [(m, self.stamp()) for m in batch]
        gate = asyncio.Event()
        self.receiver.gate, self.receiver.waiting = gate, asyncio.Event()
        drain = asyncio.ensure_future(self._drain())
        waiting = asyncio.ensure_future(self.receiver.waiting.wait())
        await asyncio.wait([drain, waiting], return_when=asyncio.FIRST_COMPLETED)
        await self.node.pipeline.handle([InboundMessage(m.topic, m.payload, n, 1, 1, ms)
                                         for n, (m, ms) in enumerate(stamped, 1)])
        for message, ms in stamped:
            message.apply(self.model, ms)
        self.model.end_batch()
        del self.pending[:k]
        self.receiver.gate = None  # if nothing was in flight after all
        gate.set()
        waiting.cancel()
        assert await drain
        assert await self._drain()  # and what the batch committed

    @rule()
    def offline_timeout(self) -> None:
        note("offline timeout of every online device")
        self.lifecycle(timeout=True)
        self.after_step()

    @precondition(lambda self: bool(self.sent))
    @rule()
    def crash(self) -> None:
        note("gateway killed at rest")
        self.crash_restart()
        self.after_step()

    def crash_restart(self) -> None:
        assert self.node is not None
        STATS["crashes"] += 1
        self.state.counted_before_restart(self.node)
        self.run(abandon(self.node, []))
        self.model.crash()
        self.broker.crash_at_ack = False
        self.node = self.run(start(self.config, self.broker, self.receiver))

    def lifecycle(self, timeout: bool) -> None:
        assert self.node is not None
        now = int(time.time() * 1000)
        if timeout:
            self.model.timeout()
        self.model.lifecycle(now)
        tick_ms = now + 86_400_000 if timeout else int(time.time() * 1000)
        committed, crashed = self.ingest(self.node.jobs.lifecycle.tick(tick_ms))
        assert committed and not crashed

    def after_step(self) -> None:
        """What the gateway's background tasks do between messages: the lifecycle pass and a
        fleet checkpoint; then every figure is checked."""
        STATS["gateway steps checked"] += 1
        self.lifecycle(timeout=False)
        assert self.node is not None
        self.run(self.node.jobs.checkpoint.tick(int(time.time() * 1000)))
        self.model.checkpoint()
        STATS["held frames"] = max(STATS["held frames"], self.model.held_count())
        self.state.stale_due(self.model.markers_due)
        self.model.markers_due = []
        self.run(checks.check_all(self.node, self.model, self.receiver, self.state,
                                  max_samples=MAX_SAMPLES,
                                  dropping=self.policy == "drop_oldest" and self.capped))


class SignalOnInc:
    """A counter that also sets an event when it is incremented (ingest waits at the cap)."""

    def __init__(self, counter: Any, event: asyncio.Event) -> None:
        self._counter = getattr(counter, "_counter", counter)
        self._event = event

    def inc(self, amount: float = 1) -> None:
        self._counter.inc(amount)
        self._event.set()


async def abandon_task(task: asyncio.Future[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Crash):
        await task


EXAMPLES = int(os.environ.get("MODEL_EXAMPLES", 4000 if LONG else 400))
PROFILE = settings(max_examples=EXAMPLES, stateful_step_count=50 if LONG else 30,
                   deadline=None, suppress_health_check=list(HealthCheck),
                   phases=[p for p in Phase if p is not Phase.explain])
GatewayMachine.TestCase.settings = PROFILE
TestGatewayAgainstModel = GatewayMachine.TestCase


def setup_module() -> None:
    STATS.clear()
    STATS["started"] = int(time.time())


def teardown_module() -> None:
    STATS["seconds"] = int(time.time()) - STATS.pop("started")
    line = (f"{time.strftime('%Y-%m-%dT%H:%M:%S')} profile={'long' if LONG else 'default'} "
            f"max_examples={EXAMPLES} "
            + " ".join(f"{k.replace(' ', '_')}={v}" for k, v in sorted(STATS.items())))
    RUNS_LOG.parent.mkdir(exist_ok=True)
    with RUNS_LOG.open("a") as log:
        log.write(line + "\n")
