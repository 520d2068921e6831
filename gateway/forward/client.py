"""Send one compressed remote-write body and say what the receiver's answer means.

The forwarder depends only on the ``RemoteWriteClient`` protocol and on five outcomes:

* ``Accepted``     - the receiver stored the batch; drop it from the buffer.
* ``Retryable``    - nothing wrong with the batch; send it again later (429, 408, 5xx, network).
* ``Rejected``     - the receiver will never take this batch; retrying cannot help.
* ``TooLarge``     - 413: the request is too big; the receiver wrote none of it.
* ``Misconfigured`` - the endpoint itself is wrong (URL, credentials, receiver flag, a TLS
  certificate we do not trust), not the samples: the forwarder pauses the endpoint instead of
  dead-lettering the whole stream.

``send`` never raises for an HTTP or network outcome, only for programming errors and
cancellation, so a caller's retry loop needs no ``except``.

A client is built from a ``RemoteWriteEndpoint`` (``HttpRemoteWriteClient(target, ...)``): its
``endpoint`` is the endpoint's NAME (cursor key, metric label, logs); the URL is what it posts to.
Credentials and TLS come from gateway.forward.auth. Every reason a receiver's answer becomes
(last_error, logs, dead letters, the API) has the credentials this client sent redacted first.
"""

from __future__ import annotations

import email.utils
import math
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import Protocol

import httpx

from gateway.credentials import redact
from gateway.endpoint_config import RemoteWriteEndpoint
from gateway.errors import ConfigError
from gateway.forward.auth import SecretAuth, endpoint_auth, tls_context
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
    status: int  # 0: no HTTP answer (a credential file unreadable, a certificate not trusted)
    reason: str
    # True: a rejected request, and an empty request was refused too (gateway.forward.policy)
    wholesale: bool = False


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


def _truncate(text: str) -> str:
    # vmauth echoes a wrong token back in its answer: never let it reach a log or the status API
    # (the client has already removed the secrets it sent; this catches any Bearer/Basic value).
    text = redact(text.strip(), ())
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


def _certificate_refused(exc: BaseException) -> bool:
    """Whether the error comes from our side refusing the endpoint's certificate."""
    seen: BaseException | None = exc
    for _ in range(8):  # httpx -> httpcore -> ssl: a short chain
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class HttpRemoteWriteClient:
    """The real ``RemoteWriteClient``: one pooled ``httpx.AsyncClient`` per endpoint."""

    def __init__(
        self,
        target: str | RemoteWriteEndpoint,
        *,
        timeout_s: float = 10.0,
        user_agent: str = "fleetgate/0.1.0",
        name: str | None = None,
        headers: Mapping[str, str] | None = None,
        auth: SecretAuth | None = None,
        verify: ssl.SSLContext | bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`target`: a configured endpoint (its name, headers, credentials, TLS and timeout_s;
        `timeout_s` is then the default for an endpoint without its own), or a bare URL with
        the rest given here. A credential file or certificate that cannot be read raises
        ConfigError: a start-up error, not a first-request one."""
        if isinstance(target, RemoteWriteEndpoint):
            if name or headers or auth or verify is not True:
                raise ValueError("an endpoint brings its own name, headers, auth and TLS")
            url, name, headers = target.url, target.name, target.headers
            timeout_s = target.timeout_s or timeout_s
            auth, verify = endpoint_auth(target), tls_context(target) or True
            self._without_client_cert = target.cert_file is None
        else:
            url = target
            self._without_client_cert = True
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            # caught here: httpx would report it per request, as a retryable transport error
            raise ValueError(f"remote-write URL must be http(s)://host/...: {url!r}")
        self.url = url
        self.endpoint = name or url  # the identity: cursor key, metric label, logs
        self._auth = auth
        request_headers = {**(headers or {})}
        # the protocol headers win over configured extras: a receiver refuses anything else
        request_headers.update({**PROTOCOL_HEADERS, "User-Agent": user_agent})
        self._client = httpx.AsyncClient(
            headers=request_headers,
            timeout=timeout_s,
            auth=auth,
            verify=verify,
            transport=transport,
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"HttpRemoteWriteClient({self.endpoint!r})"

    def redact(self, text: str) -> str:
        """`text` without any credential this client has sent."""
        return redact(text, self._auth.secrets if self._auth is not None else ())

    async def send(self, compressed_body: bytes) -> SendResult:
        try:
            response = await self._client.post(self.url, content=compressed_body)
            if 200 <= response.status_code < 300:
                return Accepted(response.status_code)
            body_text = self.redact(response.text)  # before truncation can cut a secret in two
        except httpx.RequestError as exc:
            detail = self.redact(str(exc) or repr(exc))
            if _certificate_refused(exc):
                # Not an outage: a wrong ca_file, a host name the certificate does not name, an
                # expired certificate. Paused and probed like wrong credentials.
                return Misconfigured(0, f"TLS: the endpoint's certificate is not trusted "
                                        f"({detail}); check ca_file (read at start-up) and "
                                        "the URL's host name")
            return Retryable(None, self._network_reason(exc, detail), None)
        except ConfigError as exc:
            # A credential file rewritten into something unreadable (too big, several lines):
            # the endpoint is misconfigured until it is fixed; the pause re-reads it.
            return Misconfigured(0, str(exc))
        except OSError as exc:
            # httpcore does not wrap everything: a TLS alert read mid-response (a receiver
            # refusing a missing client certificate) comes through as a raw ssl.SSLError. An
            # exception here would end the endpoint's forward task; it is a retry instead.
            detail = self.redact(str(exc) or repr(exc))
            return Retryable(None, self._network_reason(exc, detail), None)
        return classify(response.status_code, body_text, response.headers.get("Retry-After"))

    def _network_reason(self, exc: Exception, detail: str) -> str:
        reason = f"{type(exc).__name__}: {detail}"
        closed = isinstance(exc, httpx.ReadError) and not str(exc)
        refused = isinstance(exc, ssl.SSLError) and "CERTIFICATE_REQUIRED" in str(exc)
        if not (self._without_client_cert and self.url.startswith("https:")):
            return reason
        # TLS 1.3: a receiver that requires a client certificate checks it after the handshake
        # and hangs up; its alert reaches us or not, depending on timing. A restarting receiver
        # looks the same as the hang-up, so both stay retryable; the reason says what to check.
        if refused:
            reason += " (the receiver requires a client certificate: set cert_file and key_file)"
        elif closed:
            reason += (" (the receiver closed the connection without an answer; if it "
                       "requires a client certificate, set cert_file and key_file)")
        return reason

    async def aclose(self) -> None:
        await self._client.aclose()
