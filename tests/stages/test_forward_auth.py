"""Credentials and headers of a remote-write endpoint (issue 13), through the real client behind
httpx.MockTransport: the Authorization header from a secret file re-read when it changes, the
tenant header, the protocol headers that cannot be overridden, and receiver answers that never
carry a credential the gateway sent into a reason or a log."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.endpoint_config import RemoteWriteEndpoint
from gateway.errors import ConfigError
from gateway.forward.client import (
    Accepted,
    HttpRemoteWriteClient,
    Misconfigured,
    Rejected,
    Retryable,
    SendResult,
)
from gateway.remote_write.wire import build_body, compress, encode_entry, encode_labels

URL = "http://receiver.test/api/v1/write"
BODY = compress(build_body([encode_entry(encode_labels([("__name__", "up")]), 1.0, 1000)]))
TOKEN = "tok-3f9a1c77e2"
PASSWORD = "pw-Zq81!x"


def secret_file(path: Path, value: str) -> Path:
    path.write_text(value + "\n")
    return path


def rewrite(path: Path, value: str) -> None:
    """Rewrite a secret file as an operator does; the mtime is moved on explicitly, as a
    coarse-grained file system clock might not."""
    before = path.stat().st_mtime_ns
    path.write_text(value + "\n")
    os.utime(path, ns=(before + 1_000_000_000, before + 1_000_000_000))


class Recorder:
    def __init__(self, answer: Callable[[httpx.Request], httpx.Response] | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self._answer = answer or (lambda request: httpx.Response(204))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self._answer(request)


def client_for(recorder: Recorder, **endpoint: Any) -> HttpRemoteWriteClient:
    target = RemoteWriteEndpoint(url=URL, **endpoint)
    return HttpRemoteWriteClient(target, timeout_s=5.0, transport=httpx.MockTransport(recorder))


def send_all(client: HttpRemoteWriteClient, *between: Callable[[], None]) -> list[SendResult]:
    """Send once, then once more after each callable has run; close the client."""
    async def run() -> list[SendResult]:
        try:
            results = [await client.send(BODY)]
            for step in between:
                step()
                results.append(await client.send(BODY))
            return results
        finally:
            await client.aclose()

    return asyncio.run(run())


def test_the_bearer_token_comes_from_its_file_and_a_rewrite_takes_effect_on_the_next_request(
        tmp_path: Path) -> None:
    token = secret_file(tmp_path / "token", TOKEN)
    recorder = Recorder()
    client = client_for(recorder, bearer_token_file=token, name="vm")
    assert client.endpoint == "vm"  # the name is the identity; the URL is what it posts to
    results = send_all(client, lambda: rewrite(token, "tok-rotated"))
    assert results == [Accepted(204), Accepted(204)]
    assert [str(r.url) for r in recorder.requests] == [URL, URL]
    assert [r.headers["Authorization"] for r in recorder.requests] == [
        f"Bearer {TOKEN}", "Bearer tok-rotated"]


def test_basic_auth_comes_from_the_username_and_the_password_file(tmp_path: Path) -> None:
    password = secret_file(tmp_path / "password", PASSWORD)
    recorder = Recorder()
    client = client_for(recorder, basic_auth_username="fleet",
                        basic_auth_password_file=password)
    send_all(client, lambda: rewrite(password, "pw-new"))
    expected = [base64.b64encode(f"fleet:{pw}".encode()).decode() for pw in (PASSWORD, "pw-new")]
    assert [r.headers["Authorization"] for r in recorder.requests] == [
        f"Basic {e}" for e in expected]


def test_configured_headers_go_with_every_request_and_the_protocol_headers_win(
        tmp_path: Path) -> None:
    recorder = Recorder()
    client = client_for(recorder, headers={"X-Scope-OrgID": "fleet-a", "X-Extra": "1"})
    send_all(client, lambda: None)
    for request in recorder.requests:
        assert request.headers["X-Scope-OrgID"] == "fleet-a"
        assert request.headers["X-Extra"] == "1"
        assert request.headers["Content-Encoding"] == "snappy"
        assert "Authorization" not in request.headers  # no credentials configured: none sent
    # The endpoint model refuses a protocol header outright; a client given one directly (a
    # bare URL with headers) still sends the protocol's own values.
    with pytest.raises(ValueError, match="set by the gateway"):
        RemoteWriteEndpoint(url=URL, headers={"Content-Type": "text/plain"})
    raw = Recorder()
    bare = HttpRemoteWriteClient(URL, headers={
        "Content-Type": "text/plain", "Content-Encoding": "gzip",
        "X-Prometheus-Remote-Write-Version": "2.0.0", "User-Agent": "curl"},
        transport=httpx.MockTransport(raw))
    send_all(bare)
    (request,) = raw.requests
    assert request.headers["Content-Type"] == "application/x-protobuf"
    assert request.headers["Content-Encoding"] == "snappy"
    assert request.headers["X-Prometheus-Remote-Write-Version"] == "0.1.0"
    assert request.headers["User-Agent"] == "fleetgate/0.1.0"


def test_the_endpoints_timeout_wins_over_the_default(tmp_path: Path) -> None:
    seen: list[Any] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        return httpx.Response(204)

    send_all(client_for(Recorder(answer), timeout_s=2.5))
    send_all(client_for(Recorder(answer)))
    assert [t["read"] for t in seen] == [2.5, 5.0]


def test_vmauths_answer_to_a_wrong_token_never_shows_the_token(tmp_path: Path) -> None:
    # vmauth 1.79's exact answer to a wrong bearer token: 400, the token echoed back.
    token = secret_file(tmp_path / "token", TOKEN)
    body = f'cannot find the provided auth token "Bearer {TOKEN}" in config\n'
    client = client_for(Recorder(lambda r: httpx.Response(400, text=body)),
                        bearer_token_file=token)
    (result,) = send_all(client)
    assert isinstance(result, Misconfigured) and result.status == 400
    assert TOKEN not in result.reason and "cannot find the provided auth token" in result.reason


@pytest.mark.parametrize("echo", [
    pytest.param(lambda pw, user_pw_b64: f"wrong password {pw!r} for fleet", id="password"),
    pytest.param(lambda pw, user_pw_b64: f"bad credentials {user_pw_b64}", id="base64-user-pw"),
    pytest.param(lambda pw, user_pw_b64: f"got {base64.b64encode(pw.encode()).decode()}",
                 id="base64-pw"),
    pytest.param(lambda pw, user_pw_b64: f"header was: Basic {user_pw_b64}", id="header"),
])
def test_a_receiver_echoing_the_basic_auth_password_never_shows_it(
        tmp_path: Path, echo: Callable[[str, str], str]) -> None:
    password = secret_file(tmp_path / "password", PASSWORD)
    user_pw = base64.b64encode(f"fleet:{PASSWORD}".encode()).decode()
    text = echo(PASSWORD, user_pw)
    client = client_for(Recorder(lambda r: httpx.Response(400, text=text)),
                        basic_auth_username="fleet", basic_auth_password_file=password)
    (result,) = send_all(client)
    assert isinstance(result, Rejected)
    assert PASSWORD not in result.reason and user_pw not in result.reason
    assert base64.b64encode(PASSWORD.encode()).decode() not in result.reason
    assert "<redacted>" in result.reason


def test_a_token_echoed_by_a_5xx_or_across_the_reasons_length_cut_is_redacted(
        tmp_path: Path) -> None:
    token = secret_file(tmp_path / "token", TOKEN)
    cut = "x" * 500 + TOKEN + "y" * 100  # the token straddles the 512-character cut
    answers = iter([httpx.Response(503, text=f"upstream refused {TOKEN}"),
                    httpx.Response(422, text=cut)])
    client = client_for(Recorder(lambda request: next(answers)), bearer_token_file=token)
    first, second = send_all(client, lambda: None)
    assert isinstance(first, Retryable) and isinstance(second, Rejected)
    for result in (first, second):
        assert TOKEN not in result.reason and TOKEN[:8] not in result.reason


def test_the_old_token_is_redacted_from_an_answer_after_the_file_was_rewritten(
        tmp_path: Path) -> None:
    token = secret_file(tmp_path / "token", TOKEN)
    # The receiver answers the second request with the FIRST token (a cached session, say).
    client = client_for(Recorder(lambda r: httpx.Response(400, text=f"stale {TOKEN}")),
                        bearer_token_file=token)
    _, second = send_all(client, lambda: rewrite(token, "tok-rotated"))
    assert isinstance(second, Misconfigured | Rejected)
    assert TOKEN not in second.reason


def test_credentials_never_appear_in_a_repr(tmp_path: Path) -> None:
    token = secret_file(tmp_path / "token", TOKEN)
    password = secret_file(tmp_path / "password", PASSWORD)

    async def reprs() -> str:
        bearer = client_for(Recorder(), bearer_token_file=token)
        basic = client_for(Recorder(), basic_auth_username="u", basic_auth_password_file=password)
        try:
            await bearer.send(BODY)
            return " ".join(repr(x) for x in (bearer, basic, bearer._auth, basic._auth,
                                              bearer._client.auth))
        finally:
            await bearer.aclose()
            await basic.aclose()

    text = asyncio.run(reprs())
    assert TOKEN not in text and PASSWORD not in text and str(token) in text


def test_a_missing_or_empty_credential_file_is_a_start_up_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="bearer_token_file of endpoint"):
        client_for(Recorder(), bearer_token_file=tmp_path / "absent")
    with pytest.raises(ConfigError, match="is empty"):
        client_for(Recorder(), bearer_token_file=secret_file(tmp_path / "empty", ""))


def test_a_credential_file_rewritten_into_an_invalid_one_is_a_configuration_error(
        tmp_path: Path) -> None:
    token = secret_file(tmp_path / "token", TOKEN)
    recorder = Recorder()
    client = client_for(recorder, bearer_token_file=token)
    ok, broken = send_all(client, lambda: rewrite(token, f"{TOKEN}\nsecond line"))
    assert ok == Accepted(204)
    assert isinstance(broken, Misconfigured) and "more than one line" in broken.reason
    assert TOKEN not in broken.reason
    assert len(recorder.requests) == 1  # nothing sent with a half-read credential
