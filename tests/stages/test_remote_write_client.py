"""Response classification and request headers of the remote-write client (no server needed)."""

from __future__ import annotations

import asyncio
import email.utils
from collections.abc import Callable

import httpx
import pytest

from gateway.forward.client import (
    Accepted,
    HttpRemoteWriteClient,
    Misconfigured,
    Rejected,
    RemoteWriteClient,
    Retryable,
    SendResult,
    TooLarge,
    classify,
    parse_retry_after,
)
from gateway.remote_write.wire import build_body, compress, decompress, encode_entry, encode_labels

URL = "http://receiver.test/api/v1/write"
BODY = compress(build_body([encode_entry(encode_labels([("__name__", "up")]), 1.0, 1000)]))


def send_with(handler: Callable[[httpx.Request], httpx.Response], **kwargs: object) -> SendResult:
    async def run() -> SendResult:
        client = HttpRemoteWriteClient(URL, transport=httpx.MockTransport(handler), **kwargs)  # type: ignore[arg-type]
        try:
            return await client.send(BODY)
        finally:
            await client.aclose()

    return asyncio.run(run())


# ---------------------------------------------------------------------------- classification


@pytest.mark.parametrize("status", [200, 202, 204])
def test_2xx_is_accepted(status: int) -> None:
    assert classify(status, "", None) == Accepted(status)


def test_429_is_retryable_with_retry_after() -> None:
    assert classify(429, "slow down", "7") == Retryable(429, "HTTP 429: slow down", 7.0)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_is_retryable(status: int) -> None:
    result = classify(status, "storage busy", None)
    assert result == Retryable(status, f"HTTP {status}: storage busy", None)


@pytest.mark.parametrize(
    "body",
    [
        "too old sample\n",
        'failed to append: out of bounds: series {__name__="x"}',
        "TOO OLD SAMPLE",
        'label name "a" is not unique: invalid sample\n',
    ],
)
def test_5xx_for_samples_outside_the_window_is_rejected(body: str) -> None:
    result = classify(500, body, "5")
    assert isinstance(result, Rejected) and result.status == 500
    assert body.strip() in result.reason


@pytest.mark.parametrize("status", [400, 409, 415, 422])
def test_other_4xx_is_rejected_with_the_receivers_words(status: int) -> None:
    result = classify(status, "out of order sample\n", "3")
    assert result == Rejected(status, f"HTTP {status}: out of order sample")


def test_413_says_the_request_was_too_large() -> None:
    assert classify(413, "request too large", "3") == TooLarge(413, "HTTP 413: request too large")


@pytest.mark.parametrize("status", [401, 403, 404, 405, 407, 301, 302, 100])
def test_a_misconfigured_endpoint_is_a_configuration_error_not_bad_data(status: int) -> None:
    result = classify(status, "remote write receiver needs to be enabled", None)
    assert result == Misconfigured(status,
                                   f"HTTP {status}: remote write receiver needs to be enabled")


def test_vmauths_answer_to_a_wrong_token_is_a_configuration_error_and_hides_the_token() -> None:
    # vmauth 1.79 (Debian bookworm) answers a wrong bearer token with 400 and echoes it back.
    body = 'cannot find the provided auth token "Bearer s3cret-typo" in config\n'
    result = classify(400, body, None)
    assert isinstance(result, Misconfigured) and result.status == 400
    assert "s3cret-typo" not in result.reason
    assert result.reason == ('HTTP 400: cannot find the provided auth token'
                             ' "Bearer <redacted>" in config')


def test_request_timeout_is_retried() -> None:
    assert classify(408, "", "2") == Retryable(408, "HTTP 408", 2.0)


def test_reason_is_truncated_to_512_chars() -> None:
    result = classify(400, "x" * 5000, None)
    assert isinstance(result, Rejected)
    assert len(result.reason.removeprefix("HTTP 400: ")) == 512
    assert result.reason.endswith("...")


def test_empty_body_gives_a_status_only_reason() -> None:
    assert classify(503, "  ", None) == Retryable(503, "HTTP 503", None)


# ------------------------------------------------------------------------------- Retry-After


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("soon", None),
        ("120", 120.0),
        (" 3 ", 3.0),
        ("1.5", 1.5),
        ("-4", 0.0),
        ("inf", None),
        ("nan", None),
    ],
)
def test_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=0.0) == expected


def test_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    later = email.utils.formatdate(now + 30, usegmt=True)
    earlier = email.utils.formatdate(now - 30, usegmt=True)
    assert parse_retry_after(later, now=now) == pytest.approx(30.0)
    assert parse_retry_after(earlier, now=now) == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0) == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0


# ----------------------------------------------------------------------------- the client


def test_request_carries_protocol_headers_and_the_body_verbatim() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    result = send_with(handler, headers={"Authorization": "Bearer t", "Content-Type": "text/plain"})
    assert result == Accepted(204)
    (request,) = seen
    assert request.method == "POST" and str(request.url) == URL
    assert request.headers["Content-Encoding"] == "snappy"
    assert request.headers["Content-Type"] == "application/x-protobuf"
    assert request.headers["X-Prometheus-Remote-Write-Version"] == "0.1.0"
    assert request.headers["User-Agent"] == "fleetgate/0.1.0"
    assert request.headers["Authorization"] == "Bearer t"
    assert request.content == BODY
    assert decompress(request.content) == decompress(BODY)


def test_user_agent_is_configurable() -> None:
    agents: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        agents.append(request.headers["User-Agent"])
        return httpx.Response(200)

    assert send_with(handler, user_agent="fleetgate/9") == Accepted(200)
    assert agents == ["fleetgate/9"]


def test_send_classifies_http_answers() -> None:
    def answer(status: int, text: str, **headers: str) -> SendResult:
        return send_with(lambda _: httpx.Response(status, text=text, headers=headers))

    assert answer(429, "rate limited", **{"Retry-After": "2"}) == Retryable(
        429, "HTTP 429: rate limited", 2.0
    )
    assert answer(500, "too old sample") == Rejected(500, "HTTP 500: too old sample")
    assert answer(503, "down") == Retryable(503, "HTTP 503: down", None)
    assert answer(400, "out of order sample") == Rejected(400, "HTTP 400: out of order sample")


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("Connection refused"),
        httpx.ReadTimeout("timed out"),
        httpx.RemoteProtocolError("peer closed connection"),
        httpx.WriteError(""),
    ],
)
def test_network_errors_are_retryable_without_status(error: httpx.RequestError) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    result = send_with(handler)
    assert isinstance(result, Retryable)
    assert result.status is None and result.retry_after_s is None
    assert result.reason.startswith(type(error).__name__ + ": ")


def test_real_connection_refused_is_retryable() -> None:
    async def run() -> SendResult:
        # port 9 (discard) on loopback: nothing listens there in the test environment
        client = HttpRemoteWriteClient("http://127.0.0.1:9/api/v1/write", timeout_s=2.0)
        try:
            return await client.send(BODY)
        finally:
            await client.aclose()

    result = asyncio.run(run())
    assert isinstance(result, Retryable) and result.status is None
    assert "ConnectError" in result.reason


def test_programming_errors_are_not_swallowed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError, match="bug"):
        send_with(handler)


@pytest.mark.parametrize("url", ["ftp://host/x", "receiver:9090/api/v1/write", "http:///x"])
def test_bad_urls_fail_at_construction(url: str) -> None:
    with pytest.raises(ValueError):
        HttpRemoteWriteClient(url)


def test_http_client_satisfies_the_protocol() -> None:
    async def run() -> None:
        client: RemoteWriteClient = HttpRemoteWriteClient(URL)
        assert client.endpoint == URL
        await client.aclose()

    asyncio.run(run())
