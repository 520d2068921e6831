"""Polling for a condition with a deadline (what tests do instead of sleeping)."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(
    predicate: Callable[[], bool], timeout: float, interval: float = 0.05, what: str = ""
) -> None:
    """Poll `predicate` until it is true; raise TimeoutError(what) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(what or f"condition not met within {timeout:.1f} s")
        time.sleep(interval)
