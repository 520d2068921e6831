"""The gauges: devices by state, and each endpoint's oldest unsent age and send rate."""

from __future__ import annotations

import functools
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from gateway.buffer import store
from gateway.fleet.state import FleetState
from gateway.jobs.runner import Db
from gateway.metrics import GatewayMetrics

GAUGE_INTERVAL_S = 5.0  # device counts and the oldest unsent age, for alerting
RATE_WINDOW_S = 60  # send_rate is over about the last minute


class SentCount(Protocol):
    @property
    def sent_samples(self) -> int: ...


class Sending(Protocol):
    """What the gauges read of a forwarder (gateway.forward.forwarder.Forwarder)."""

    @property
    def endpoint(self) -> str: ...

    @property
    def cursor(self) -> int: ...

    @property
    def status(self) -> SentCount: ...


@dataclass
class GaugesJob:
    """committed_upto: the buffer's committed position (an endpoint whose cursor is there has
    nothing unsent); monotonic: the clock of the send rates."""

    fleet: FleetState
    forwarders: Sequence[Sending]
    db: Db
    committed_upto: Callable[[], int]
    metrics: GatewayMetrics
    monotonic: Callable[[], float] = time.monotonic
    unsent_age_s: dict[str, float] = field(default_factory=dict, init=False)
    # (monotonic s, samples sent) per endpoint, every GAUGE_INTERVAL_S over the last minute
    _sent_history: dict[str, deque[tuple[float, int]]] = field(default_factory=dict, init=False,
                                                               repr=False)

    async def tick(self, now_ms: int) -> None:
        for state, count in self.fleet.counts().items():
            self.metrics.devices.labels(state).set(count)
        await self._update_unsent_age(now_ms)

    async def _update_unsent_age(self, now_ms: int) -> None:
        """Age of each endpoint's oldest unsent frame: grows through an outage, 0 when caught up."""
        for forwarder in self.forwarders:
            age = 0.0
            if forwarder.cursor < self.committed_upto():
                oldest = await self.db.read(
                    functools.partial(store.oldest_unsent_ms, after_id=forwarder.cursor))
                if oldest is not None:
                    age = max(0.0, (now_ms - oldest) / 1000)
            self.metrics.oldest_unsent_age.labels(forwarder.endpoint).set(age)
            self.unsent_age_s[forwarder.endpoint] = age
            history = self._sent_history.setdefault(
                forwarder.endpoint, deque(maxlen=int(RATE_WINDOW_S / GAUGE_INTERVAL_S) + 1))
            history.append((self.monotonic(), forwarder.status.sent_samples))

    def send_rate(self, endpoint: str) -> float:
        """Samples per second an endpoint took over about the last minute."""
        history = self._sent_history.get(endpoint)
        if not history or len(history) < 2:
            return 0.0
        (t0, n0), (t1, n1) = history[0], history[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0
