"""Fan-out of device events to live subscribers (the API's server-sent event stream).

Each subscriber has a bounded queue. A subscriber that falls behind by more than its queue
is marked overflowed and dropped rather than slowing the gateway or growing without bound;
the stream then tells its client to reload and reconnect.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

SUBSCRIBER_QUEUE = 1000


class Subscription:
    def __init__(self, device_id: str | None, maxsize: int) -> None:
        self.device_id = device_id
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize)
        self.overflowed = asyncio.Event()


class EventHub:
    def __init__(self, queue_size: int = SUBSCRIBER_QUEUE) -> None:
        self._subscribers: set[Subscription] = set()
        self._queue_size = queue_size

    def subscribe(self, device_id: str | None = None) -> Subscription:
        subscription = Subscription(device_id, self._queue_size)
        self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)

    def publish(self, events: Iterable[dict[str, Any]]) -> None:
        subscribers = list(self._subscribers)
        if not subscribers:
            return
        for event in events:
            for subscription in subscribers:
                if subscription.device_id not in (None, event["device_id"]):
                    continue
                try:
                    subscription.queue.put_nowait(event)
                except asyncio.QueueFull:
                    subscription.overflowed.set()
                    self._subscribers.discard(subscription)

    def __len__(self) -> int:
        return len(self._subscribers)

    def close(self) -> None:
        """End every stream (the gateway stops): each gets an end marker, or is overflowed."""
        for subscription in list(self._subscribers):
            try:
                subscription.queue.put_nowait({"end": "shutdown", "device_id": ""})
            except asyncio.QueueFull:
                subscription.overflowed.set()
        self._subscribers.clear()
