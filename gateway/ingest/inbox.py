"""The inbox: the bounded hand-off of received messages from paho's thread to the event loop.

No paho here: the paho adapter (`mqtt.py`) calls `put` on its network thread; the pipeline calls
`get_batch` and, once a batch is acknowledged, `release`. The producer wakes the loop with
`loop.call_soon_threadsafe` once per batch, never per message, and never touches asyncio objects
otherwise.

Backpressure: at most `max_in_hand` unacked messages; when full, `put` (paho's thread) waits, so
paho stops reading the socket and the broker's inflight window holds the rest.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import NamedTuple


class InboundMessage(NamedTuple):
    topic: str
    payload: bytes
    mid: int
    qos: int
    generation: int  # connection number it arrived on
    received_ms: int


class Inbox:
    """Bounded hand-off from paho's thread to the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_in_hand: int) -> None:
        self._loop = loop
        self._items: deque[InboundMessage] = deque()
        self._slots = threading.Semaphore(max_in_hand)
        self._event = asyncio.Event()
        self._wake_pending = False
        # How many queued items the consumer waits for; 0 while it is busy. The producer wakes
        # the loop only when that many are there: one wake-up per batch, not per message.
        self._wanted = 0
        self._closed = False

    # --- paho thread
    def put(self, item: InboundMessage) -> bool:
        """Queue item; block while max_in_hand messages are unacked. False once closed."""
        while not self._slots.acquire(timeout=0.5):
            if self._closed:
                return False
        if self._closed:
            self._slots.release()
            return False
        self._items.append(item)
        # Append first, read _wanted second (the consumer sets it, then re-checks the deque):
        # either we see it waiting or it sees our item. The GIL orders the two.
        wanted = self._wanted
        if wanted and len(self._items) >= wanted and not self._wake_pending:
            self._wake_pending = True
            self._loop.call_soon_threadsafe(self._wake)
        return True

    # --- event loop
    def _wake(self) -> None:
        self._wake_pending = False
        self._event.set()

    async def get_batch(self, max_items: int, max_delay_s: float) -> list[InboundMessage]:
        """Wait for at least one message, then up to max_delay_s for max_items of them."""
        items = self._items
        try:
            while not items:
                if self._closed:
                    return []
                self._event.clear()
                self._wanted = 1
                if items:
                    break
                await self._event.wait()
            if len(items) < max_items and max_delay_s > 0 and not self._closed:
                deadline = self._loop.time() + max_delay_s
                while len(items) < max_items:
                    remaining = deadline - self._loop.time()
                    if remaining <= 0:
                        break
                    self._event.clear()
                    self._wanted = max_items
                    if len(items) >= max_items:
                        break
                    try:
                        await asyncio.wait_for(self._event.wait(), remaining)
                    except TimeoutError:
                        break
        finally:
            self._wanted = 0
        count = min(max_items, len(items))
        return [items.popleft() for _ in range(count)]

    def release(self, count: int) -> None:
        """Free the slots of messages that are acked (or will be redelivered)."""
        if count:
            self._slots.release(count)

    def __len__(self) -> int:
        return len(self._items)

    def close(self) -> None:
        """Event loop side: refuse further messages (they stay at the broker) and wake get_batch."""
        self._closed = True
        self._event.set()
