"""One endpoint's sending policy: what each class of receiver answer makes the forwarder do.

    2xx                    accepted: the forwarder moves its cursor past the request.
    5xx, 429, 408, network retryable: the same request again, with exponential backoff and
                           bounded jitter (each wait 0.8..1.0 of its base, the base doubling from
                           remote_write_retry_min_s up to remote_write_retry_max_s), honouring
                           Retry-After (up to 600 s). Nothing is lost, whatever the outage.
    400, 422, other 4xx    rejected: unless the endpoint refuses wholesale (below), the whole
    (and Prometheus 2.42's request is dead-lettered once, with the receiver's reason; it is never
    permanent 5xx)         split or sent again (remote-write 1.0: a sender MUST NOT retry a 4xx
                           but 429; a receiver that wrote part of it before answering 400 would
                           get that part twice).
    413                    too large: the receiver wrote nothing; the endpoint's request size is
                           halved (remembered) and the refused frames go again in smaller requests.
    401/403/404/405/407,   misconfigured: the endpoint pauses. Every frame stays in the buffer
    3xx, vmauth's 400      (the cursor stays, nothing is dead-lettered or resent); an empty
    for a wrong token      WriteRequest probes it every remote_write_paused_probe_s, and the first
                           2xx resumes sending: the same request goes again.

Refused wholesale or a refused sample? Receivers do not all say 401 to wrong credentials (a
proxy, a tenant not allowed, a vmauth of another version), and dead-lettering them would empty
the whole stream into the dead letters. So before a rejected request (or a single sample still
too large: a proxy's limit set to nothing) is dead-lettered, an empty WriteRequest probes the
endpoint at once:

    probe 2xx              the refusal was about these samples: dead-lettered, as above.
    probe 4xx (any kind),  refused wholesale (an empty request is refused too): a configuration
    permanent 5xx, 3xx     error. The request counts as misconfigured: the endpoint pauses as
                           above, nothing is dead-lettered, and after the first accepted probe
                           the same request goes again (and is probed again if refused again).
    probe 5xx, 429, 408,   no verdict yet (the receiver is in trouble right now): the request is
    network                kept (nothing dead-lettered, and it is not sent again: remote-write
                           1.0 forbids resending after a 4xx) and the EMPTY request is retried
                           with the backoff of a retryable answer until it gets a verdict. A stop
                           meanwhile leaves the request in the buffer, like a retry.

Every probe of this check counts in fleetgate_forward_requests{result}; the pause shows in
fleetgate_forward_paused and its reason (status.paused, last_error) starts with REFUSED_WHOLESALE.

`EndpointSender` owns the retry loop and the pause, `dead_letter` and `replay` the refused
requests; the forwarder decides what to send.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from gateway.backoff import backoff_s
from gateway.buffer import store
from gateway.errors import ForwardUnavailable
from gateway.forward.client import (
    Accepted,
    Misconfigured,
    Rejected,
    RemoteWriteClient,
    Retryable,
    SendResult,
    TooLarge,
)
from gateway.forward.order import Part, Request
from gateway.metrics import GatewayMetrics
from gateway.remote_write.wire import compress, decode_write_request
from gateway.settings import ForwardConfig

log = logging.getLogger(__name__)

MAX_RETRY_AFTER_S = 600.0  # a Retry-After beyond this is taken as this
_EMPTY_REQUEST = compress(b"")  # a WriteRequest with no timeseries: what a pause probes with
REFUSED_WHOLESALE = "refused wholesale (an empty request is refused too)"


@dataclass(slots=True)
class ForwarderStatus:
    cursor: int
    cursor_offset: int = 0  # entries of frame cursor + 1 already sent (a split frame)
    sent_samples: int = 0
    dead_letters: int = 0
    retries: int = 0
    last_error: str | None = None
    last_success_ms: int | None = None
    live_lane: tuple[int, int] | None = None  # (live_from, live_upto) while one is open
    paused: str | None = None  # why the endpoint is paused (a configuration error), else None
    max_samples_per_request: int = 0  # remote_write_max_samples, lowered after a 413


Sent = Accepted | Rejected | TooLarge


class EndpointSender:
    """Sends one request until it is accepted, refused for good or too large; waits out
    retryable failures and pauses on configuration errors. None: told to stop."""

    def __init__(self, endpoint: str, client: RemoteWriteClient, config: ForwardConfig,
                 metrics: GatewayMetrics, status: ForwarderStatus,
                 on_stuck: Callable[[], None]) -> None:
        self.endpoint = endpoint
        self._client = client
        self._config = config
        self._metrics = metrics
        self.status = status
        self._on_stuck = on_stuck  # the endpoint starts failing: ingest must not wait on it
        self.retrying = False
        self.stopping = False

    async def send(self, request: Request) -> Sent | None:
        attempt = 0
        while True:
            body, samples = await request.attempt()
            if not samples:  # every frame of it was dropped meanwhile (drop_oldest)
                self.retrying = False
                return Accepted(0)
            try:
                result = await self._attempt(body)
            finally:
                request.landed()
            if isinstance(result, Rejected) or (isinstance(result, TooLarge) and samples == 1):
                verdict = await self._wholesale(result)
                if verdict is None:
                    return None
                result = verdict
            if isinstance(result, Misconfigured):
                if not await self._pause(result):
                    return None
                continue  # nothing of it was written: the same request, now that it is fixed
            if not isinstance(result, Retryable):
                self.retrying = False
                if isinstance(result, Accepted):
                    self._metrics.forward_samples.labels(self.endpoint).inc(samples)
                    self.status.sent_samples += samples
                    self.status.last_success_ms = int(time.time() * 1000)
                return result
            if self.stopping:
                return None
            attempt += 1
            await asyncio.sleep(self._retry_wait(result, attempt))
            if self.stopping:
                return None

    async def _wholesale(self, refused: Rejected | TooLarge
                         ) -> Rejected | TooLarge | Misconfigured | None:
        """Before `refused` is dead-lettered: does the endpoint refuse an empty request too?
        (the rule in the module's docstring). None: told to stop before it could tell."""
        attempt = 0
        while True:
            probe = await self._attempt(_EMPTY_REQUEST)
            if isinstance(probe, Accepted):
                return refused  # about these samples
            if not isinstance(probe, Retryable):
                return Misconfigured(refused.status, f"{REFUSED_WHOLESALE}: {refused.reason}",
                                     wholesale=True)
            # No verdict yet: the refused request is not sent again, only the empty one.
            if self.stopping:
                return None
            attempt += 1
            await asyncio.sleep(self._retry_wait(Retryable(
                probe.status, f"{refused.reason}; an empty request to tell whether the endpoint "
                f"refuses everything: {probe.reason}", probe.retry_after_s), attempt))
            if self.stopping:
                return None

    async def _attempt(self, body: bytes) -> SendResult:
        m = self._metrics
        started = time.perf_counter()
        result = await self._client.send(body)
        m.forward_duration.labels(self.endpoint).observe(time.perf_counter() - started)
        m.forward_requests.labels(self.endpoint, type(result).__name__.lower()).inc()
        return result

    def _retry_wait(self, result: Retryable, attempt: int) -> float:
        self._stuck(result.reason)
        self._metrics.forward_retries.labels(self.endpoint).inc()
        self.status.retries += 1
        wait = backoff_s(attempt, self._config.retry_min_s, self._config.retry_max_s)
        if result.retry_after_s is not None:
            wait = max(wait, min(result.retry_after_s, MAX_RETRY_AFTER_S))
        log.warning("%s: attempt %d failed (%s); retrying in %.2f s", self.endpoint, attempt,
                    result.reason, wait)
        return wait

    def _stuck(self, reason: str) -> None:
        self.status.last_error = reason
        if not self.retrying:
            self.retrying = True
            self._on_stuck()

    async def _pause(self, result: Misconfigured) -> bool:
        """Probe with empty requests until one is accepted (True) or we are stopping."""
        status, gauge = self.status, self._metrics.forward_paused.labels(self.endpoint)
        status.paused = result.reason
        self._stuck(result.reason)
        gauge.set(1)
        if result.wholesale:
            log.error("%s: paused: %s. Wrong credentials (bearer token, basic auth), a proxy, "
                      "a tenant it does not allow? Nothing is dead-lettered for it: every frame "
                      "stays buffered; an empty request probes it every %g s", self.endpoint,
                      result.reason, self._config.paused_probe_s)
        else:
            log.error("%s: paused: the endpoint answers like it is misconfigured (%s). Check its "
                      "URL, the credentials (bearer token, basic auth) and that the receiver "
                      "takes remote write (Prometheus: --web.enable-remote-write-receiver). Every "
                      "frame stays buffered; an empty request probes it every %g s",
                      self.endpoint, result.reason, self._config.paused_probe_s)
        while True:
            await asyncio.sleep(self._config.paused_probe_s)
            if self.stopping:
                return False
            probe = await self._client.send(_EMPTY_REQUEST)
            if isinstance(probe, Accepted):
                break
            reason = probe.reason  # the newest answer
            if result.wholesale and not isinstance(probe, Retryable):
                reason = f"{REFUSED_WHOLESALE}: {reason}"
            status.paused = status.last_error = reason
        status.paused = None
        gauge.set(0)
        log.warning("%s: the endpoint answers again; paused sending resumes", self.endpoint)
        return True


async def dead_letter(write: Callable[[Callable[[sqlite3.Connection], None]], Awaitable[None]],
                      endpoint: str, parts: Sequence[Part], refused: Rejected | TooLarge,
                      status: ForwarderStatus, metrics: GatewayMetrics) -> None:
    """A refused request goes to the dead letters whole, once: one row per sample (so a
    replay can send them again), each with the receiver's reason. `write` must not give up on
    a failing disk by unwinding: the forwarder would send the refused request again."""
    now_ms = int(time.time() * 1000)
    reason = refused.reason[:1000]
    rows = [(endpoint, frame_id, now_ms, refused.status, reason, describe(entry), entry)
            for frame_id, entries, _ in parts for entry in entries]
    await write(lambda conn: store.add_dead_letters(conn, rows))
    status.dead_letters += len(rows)
    status.last_error = refused.reason
    metrics.forward_dead_letters.labels(endpoint).inc(len(rows))
    log.error("%s: a request of %d samples was refused (%s) and dead-lettered whole, e.g. %s",
              endpoint, len(rows), reason, rows[0][5])


async def replay(client: RemoteWriteClient, endpoint: str,
                 letters: Sequence[tuple[int, bytes]], *, probe: bool = True
                 ) -> tuple[list[int], list[tuple[int, str, int]]]:
    """Send dead letters (id, entry) again, once, outside the cursor's order: returns the ids
    the endpoint took and (status, reason, id) of those it refused again. Raises
    ForwardUnavailable when it cannot be reached, is misconfigured or refuses wholesale (an
    empty request is refused too): nothing changes."""
    if not letters:
        return [], []
    result = await client.send(compress(b"".join(e for _, e in letters)))
    if isinstance(result, Accepted):
        return [i for i, _ in letters], []
    if isinstance(result, Retryable | Misconfigured):
        raise ForwardUnavailable(endpoint, result.reason)
    if (probe and isinstance(result, Rejected)
            and not isinstance(await client.send(_EMPTY_REQUEST), Accepted)):
        raise ForwardUnavailable(endpoint, f"{REFUSED_WHOLESALE}: {result.reason}")
    if len(letters) == 1:
        return [], [(result.status, result.reason, letters[0][0])]
    delivered: list[int] = []
    refused: list[tuple[int, str, int]] = []
    for letter in letters:  # an operator asked for it: one request each finds the refused
        took, again = await replay(client, endpoint, [letter], probe=False)
        delivered += took
        refused += again
    return delivered, refused


def describe(entry: bytes) -> str:
    """An entry as a human reads it: name{labels} value @timestamp."""
    try:
        decoded = decode_write_request(entry)
    except ValueError:
        return "<undecodable entry>"
    parts = []
    for labels, samples in decoded:
        name = labels.get("__name__", "")
        label_text = ",".join(f'{k}="{v}"' for k, v in labels.items() if k != "__name__")
        for value, ts in samples:
            shown = repr(value) if math.isfinite(value) else str(value)
            parts.append(f"{name}{{{label_text}}} {shown} @{ts}")
    return "; ".join(parts)
