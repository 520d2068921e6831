"""Send one compressed remote-write body and say what the receiver's answer means.

The forwarder depends only on the ``RemoteWriteClient`` protocol and on five outcomes:

* ``Accepted``     - the receiver stored the batch; drop it from the buffer.
* ``Retryable``    - nothing wrong with the batch; send it again later (429, 408, 5xx, network).
* ``Rejected``     - the receiver will never take this batch; retrying cannot help.
* ``TooLarge``     - 413: the request is too big; the receiver wrote none of it.
* ``Misconfigured`` - the endpoint itself is wrong (URL, credentials, receiver flag), not the
  samples: the forwarder pauses the endpoint instead of dead-lettering the whole stream.

``send`` never raises for an HTTP or network outcome, only for programming errors and
cancellation, so a caller's retry loop needs no ``except``.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import Protocol

import httpx

from gateway.remote_write.wire import PROTOCOL_HEADERS

__all__ = [
    "Accepted",
    "HttpRemoteWriteClient",
    "Misconfigured",
    "Rejected",
    "RemoteWriteClient",
    "Retryable",
    "SendResult",
    "TooLarge",
    "classify",
    "parse_retry_after",
]

MAX_REASON_CHARS = 512

# Prometheus 2.42 answers 500 to samples older than its out-of-order window allows ("too old
# sample"), to some out-of-bounds appends, and to duplicate label names ('label name "a" is not
# unique: invalid sample'): permanent errors dressed as retryable ones. Retrying them would
# block the queue behind one batch forever.
_PERMANENT_5XX_MARKERS = ("too old sample", "out of bounds", "invalid sample")


@dataclass(frozen=True, slots=True)
class Accepted:
    status: int


@dataclass(frozen=True, slots=True)
class Retryable:
    status: int | None  # None: no HTTP answer at all (connect error, timeout, ...)
    reason: str
    retry_after_s: float | None


@dataclass(frozen=True, slots=True)
class Rejected:
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class TooLarge:
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class Misconfigured:
    status: int
    reason: str


SendResult = Accepted | Retryable | Rejected | TooLarge | Misconfigured


class RemoteWriteClient(Protocol):
    endpoint: str

    async def send(self, compressed_body: bytes) -> SendResult: ...

    async def aclose(self) -> None: ...


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or HTTP-date), >= 0.

    ``now`` is a Unix time (defaults to the wall clock) used for HTTP-dates. Returns None for a
    missing or unparsable header.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT; "-0000" parses as naive
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


# vmauth echoes a wrong token back in its answer: never let it reach a log or the status API.
_CREDENTIALS = re.compile(r"(?i)\b(bearer|basic)\s+[^\s\"']+")


def _truncate(text: str) -> str:
    text = _CREDENTIALS.sub(r"\1 <redacted>", text.strip())
    if len(text) <= MAX_REASON_CHARS:
        return text
    return text[: MAX_REASON_CHARS - 3] + "..."


# Answers that say "this endpoint is wrong" (bad URL, credentials, receiver flag off, a redirect
# to a login page), not "these samples are wrong": dead-lettering would empty the whole stream
# into the dead letters, so the forwarder pauses the endpoint and probes it until it answers 2xx.
_MISCONFIGURED = frozenset({401, 403, 404, 405, 407})
# vmauth before 1.91 answers a WRONG bearer token with 400 and this body (the token echoed back;
# a missing token is 401): a credentials typo, not bad data.
_AUTH_400_MARKERS = ("cannot find the provided auth token",)


def classify(status: int, body_text: str, retry_after: str | None) -> SendResult:
    """Map a receiver's answer to an outcome:
    2xx accepted; 429, 408 and 5xx retryable (but the permanent-5xx markers of Prometheus 2.42:
    rejected); 413 too large; answers that mean the endpoint itself is misconfigured
    (401/403/404/405/407, 1xx/3xx, vmauth's wrong-token 400) misconfigured; every other 4xx
    rejected with the receiver's own words as the reason (the request is dead-lettered).
    """
    if 200 <= status < 300:
        return Accepted(status)
    reason = f"HTTP {status}: {_truncate(body_text)}" if body_text.strip() else f"HTTP {status}"
    lowered = body_text.lower()
    if status >= 500:
        if any(marker in lowered for marker in _PERMANENT_5XX_MARKERS):
            return Rejected(status, reason)
        return Retryable(status, reason, parse_retry_after(retry_after))
    if status in (429, 408):
        return Retryable(status, reason, parse_retry_after(retry_after))
    if (status in _MISCONFIGURED or status < 200 or 300 <= status < 400
            or (status == 400 and any(marker in lowered for marker in _AUTH_400_MARKERS))):
        return Misconfigured(status, reason)
    if status == 413:
        return TooLarge(status, reason)
    return Rejected(status, reason)


class HttpRemoteWriteClient:
    """The real ``RemoteWriteClient``: one pooled ``httpx.AsyncClient`` per endpoint."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 10.0,
        user_agent: str = "fleetgate/0.1.0",
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            # caught here: httpx would report it per request, as a retryable transport error
            raise ValueError(f"remote-write URL must be http(s)://host/...: {url!r}")
        self.endpoint = url
        request_headers = {**(headers or {})}
        # the protocol headers win over configured extras: a receiver refuses anything else
        request_headers.update({**PROTOCOL_HEADERS, "User-Agent": user_agent})
        self._client = httpx.AsyncClient(
            headers=request_headers,
            timeout=timeout_s,
            transport=transport,
            follow_redirects=False,
        )

    async def send(self, compressed_body: bytes) -> SendResult:
        try:
            response = await self._client.post(self.endpoint, content=compressed_body)
            if 200 <= response.status_code < 300:
                return Accepted(response.status_code)
            body_text = response.text
        except httpx.RequestError as exc:
            detail = str(exc) or repr(exc)
            return Retryable(None, f"{type(exc).__name__}: {detail}", None)
        return classify(response.status_code, body_text, response.headers.get("Retry-After"))

    async def aclose(self) -> None:
        await self._client.aclose()
