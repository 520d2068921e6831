"""EventHub: fan-out of device events to bounded subscriber queues (the SSE stream's source)."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.fleet.events import SUBSCRIBER_QUEUE, EventHub, Subscription


def event(device_id: str, n: int) -> dict[str, Any]:
    return {"id": n, "device_id": device_id, "kind": "state", "state": "online"}


def drain(subscription: Subscription) -> list[dict[str, Any]]:
    out = []
    while not subscription.queue.empty():
        out.append(subscription.queue.get_nowait())
    return out


def test_every_subscriber_gets_every_event_in_order() -> None:
    hub = EventHub()
    first, second = hub.subscribe(), hub.subscribe()
    events = [event("a", 1), event("b", 2), event("a", 3)]
    hub.publish(events)
    hub.publish(iter([event("c", 4)]))  # any iterable, e.g. a generator of as_dict()s
    assert drain(first) == drain(second) == [*events, event("c", 4)]
    assert len(hub) == 2


def test_a_device_filter_passes_only_that_devices_events() -> None:
    hub = EventHub()
    only_a, everything = hub.subscribe("a"), hub.subscribe()
    hub.publish([event("a", 1), event("b", 2), event("ab", 3), event("a", 4)])
    assert [e["id"] for e in drain(only_a)] == [1, 4]
    assert [e["id"] for e in drain(everything)] == [1, 2, 3, 4]


def test_publishing_without_subscribers_is_harmless() -> None:
    hub = EventHub()
    hub.publish(event("a", i) for i in range(10))
    assert len(hub) == 0


def test_a_slow_subscriber_is_marked_overflowed_and_dropped_alone() -> None:
    hub = EventHub(queue_size=3)
    slow, fast, other_device = hub.subscribe(), hub.subscribe(), hub.subscribe("z")
    hub.publish([event("a", 1), event("a", 2)])
    assert [e["id"] for e in drain(fast)] == [1, 2]
    hub.publish([event("a", 3), event("a", 4)])  # slow has 4 queued by now: one too many
    assert slow.overflowed.is_set()
    assert not fast.overflowed.is_set() and not other_device.overflowed.is_set()
    assert len(hub) == 2
    assert [e["id"] for e in drain(fast)] == [3, 4]
    hub.publish([event("a", 5), event("z", 6)])
    assert [e["id"] for e in drain(slow)] == [1, 2, 3]  # what fitted, then nothing more
    assert [e["id"] for e in drain(fast)] == [5, 6]
    assert [e["id"] for e in drain(other_device)] == [6]
    assert not fast.overflowed.is_set()


def test_the_default_queue_holds_the_documented_thousand_events() -> None:
    hub = EventHub()
    subscription = hub.subscribe()
    hub.publish(event("a", i) for i in range(SUBSCRIBER_QUEUE))
    assert not subscription.overflowed.is_set()
    hub.publish([event("a", SUBSCRIBER_QUEUE)])
    assert subscription.overflowed.is_set()
    assert SUBSCRIBER_QUEUE == 1000  # docs/api.md: "more than 1,000 events queued"


def test_an_unsubscribed_stream_gets_nothing_more() -> None:
    hub = EventHub()
    gone, staying = hub.subscribe(), hub.subscribe()
    hub.unsubscribe(gone)
    hub.unsubscribe(gone)  # twice is harmless
    hub.publish([event("a", 1)])
    assert drain(gone) == [] and [e["id"] for e in drain(staying)] == [1]
    assert len(hub) == 1


def test_close_ends_every_stream_and_a_waiting_reader_wakes() -> None:
    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]], bool]:
        hub = EventHub(queue_size=2)
        reader, filtered, full = hub.subscribe(), hub.subscribe("b"), hub.subscribe()
        hub.publish([event("a", 1), event("a", 2)])  # fills `full` (and `reader`)
        drain(reader)

        async def read_until_end(subscription: Subscription) -> list[dict[str, Any]]:
            got = []
            while True:
                item = await subscription.queue.get()
                got.append(item)
                if "end" in item:
                    return got

        waiting = asyncio.create_task(read_until_end(reader))
        await asyncio.sleep(0)  # the reader is now blocked on its empty queue
        hub.close()
        read = await asyncio.wait_for(waiting, 5)
        assert len(hub) == 0
        hub.publish([event("a", 3)])  # after close: nobody is left to get it
        assert reader.queue.empty()
        return read, drain(filtered), full.overflowed.is_set()

    read, filtered, full_overflowed = asyncio.run(scenario())
    assert read == [{"end": "shutdown", "device_id": ""}]
    assert filtered == [{"end": "shutdown", "device_id": ""}]  # filters don't hide the end
    assert full_overflowed  # no room for the end marker: told to reconnect instead
