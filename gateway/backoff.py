"""One backoff rule for every retry of the gateway (group commits, remote-write requests)."""

from __future__ import annotations

import random

JITTER = (0.8, 1.0)  # each wait is this fraction of its base: waits grow, herds still spread


def backoff_s(attempt: int, min_s: float, max_s: float,
              rng: random.Random | None = None) -> float:
    """Wait before retry number `attempt` (1, 2, ...): min_s * 2**(attempt-1), capped at
    max_s, times uniform(0.8, 1.0)."""
    base = min(max_s, min_s * 2 ** min(attempt - 1, 64))
    return base * (rng or random).uniform(*JITTER)
