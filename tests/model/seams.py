"""The two network seams of a gateway under the model: a broker side and a receiver.

Both persist across gateway crashes (they are outside the gateway). Either can be told to make
the gateway crash at a chosen point: `Crash` raised from a seam unwinds the gateway's task the
way a kill stops it there, and the machine then abandons every in-memory object.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

from gateway.forward.client import Accepted, Rejected, Retryable, SendResult
from gateway.remote_write.wire import decode_write_request, decompress  # the seam only

from .reference import STALE, Sample, receiver_key


class Crash(Exception):
    """The gateway is killed here."""


class BrokerSide:
    """What the pipeline needs of MQTT (acks and publishes), standing in for MqttIngest."""

    def __init__(self, *_args: Any, **_kwargs: Any) -> None:
        self.crash_at_ack = False
        self.acked = 0
        self.published: list[tuple[str, bytes]] = []

    def ack(self, messages: list[Any]) -> int:
        if self.crash_at_ack:
            self.crash_at_ack = False
            raise Crash("killed after the commit, before the PUBACKs")
        self.acked += len(messages)
        return len(messages)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self.published.append((topic, payload))

    def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


OUTCOMES = ("ok", "503", "429", "400", "crash_stored", "crash_lost")


@dataclass
class Request:
    samples: list[Sample]
    outcome: str


class Receiver:
    """A remote-write endpoint that answers from a script (then 204 to everything)."""

    endpoint = "http://127.0.0.1:9/model"

    def __init__(self) -> None:
        self.script: deque[str] = deque()
        self.requests: list[Request] = []
        self.accepted: Counter[Sample] = Counter()
        self.refused: Counter[Sample] = Counter()
        self.gate: asyncio.Event | None = None  # set: the next request waits for it
        self.waiting = asyncio.Event()

    def __call__(self, *_args: Any, **_kwargs: Any) -> Receiver:  # HttpRemoteWriteClient(...)
        return self

    async def send(self, compressed_body: bytes) -> SendResult:
        samples = [(receiver_key(labels), STALE if math.isnan(value) else value, ts)
                   for labels, points in decode_write_request(decompress(compressed_body))
                   for value, ts in points]
        if not samples:  # the forwarder's check of a refusal (or a pause's probe): the
            return Accepted(204)  # script is for requests with samples; it takes every stream
        if self.gate is not None:
            gate, self.gate = self.gate, None
            self.waiting.set()
            await gate.wait()
        outcome = self.script.popleft() if self.script else "ok"
        self.requests.append(Request(samples, outcome))
        if outcome in ("ok", "crash_stored"):
            self.accepted.update(samples)
        if outcome == "ok":
            return Accepted(204)
        if outcome == "503":
            return Retryable(503, "model: unavailable", None)
        if outcome == "429":
            return Retryable(429, "model: too many requests", 0.0)
        if outcome == "400":
            self.refused.update(samples)
            return Rejected(400, "model: refused")
        raise Crash(f"killed while a request was in flight ({outcome})")

    async def aclose(self) -> None:
        pass
