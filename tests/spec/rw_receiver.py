"""A recording remote-write receiver: a real HTTP server on a free loopback port, in a thread.

It records every request as it arrived (method, path, headers, raw body, the body decoded by
the independent `rw_wire` reader) and answers from a script: the next `Reply` queued with
`script()`, else the default (204), else whatever a `responder` callable decides from the
decoded request. A reply with `hold=True` keeps the request open (no answer) until `release()`,
so a test can look at what the sender does while a request is in flight.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.spec.rw_wire import Sample, Series, WireError, decode_body

LOOPBACK = "127.0.0.1"
HOLD_LIMIT_S = 60.0  # a held request is answered 503 after this, so no test can hang on it


@dataclass(frozen=True, slots=True)
class Reply:
    status: int = 204
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    hold: bool = False


@dataclass(slots=True)
class Request:
    index: int
    at: float  # time.monotonic() when the whole body had been read
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes  # as sent (compressed)
    series: list[Series] = field(default_factory=list)
    wire_error: str | None = None
    status: int = 0  # what the receiver answered (0 while held)

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300

    @property
    def sample_count(self) -> int:
        return sum(len(s.samples) for s in self.series)

    def samples(self) -> list[tuple[tuple[tuple[str, str], ...], Sample]]:
        """(series key, sample) of every sample, in the order sent."""
        return [(s.key(), sample) for s in self.series for sample in s.samples]


Responder = Callable[[Request], Reply]


class RecordingReceiver:
    def __init__(self, path: str = "/api/v1/write") -> None:
        self.requests: list[Request] = []
        self.default = Reply()
        self.responder: Responder | None = None
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._held: list[threading.Event] = []
        self._closing = False
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like a real receiver

            def do_POST(self) -> None:
                receiver._handle(self)

            def do_GET(self) -> None:
                receiver._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://{LOOPBACK}:{self._server.server_address[1]}{path}"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="recording-receiver", daemon=True)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> RecordingReceiver:
        self._thread.start()
        return self

    def close(self) -> None:
        self._closing = True
        self.release()
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------------ script
    def script(self, *replies: Reply) -> None:
        """Answer the next requests with these, in order; then the default again."""
        with self._lock:
            self._script.extend(replies)

    def release(self) -> None:
        """Answer every held request (with the status it was scripted with)."""
        with self._lock:
            held, self._held = self._held, []
        for event in held:
            event.set()

    @property
    def held(self) -> int:
        with self._lock:
            return len(self._held)

    # ------------------------------------------------------------------ reading
    def snapshot(self) -> list[Request]:
        with self._lock:
            return list(self.requests)

    def with_samples(self) -> list[Request]:
        return [r for r in self.snapshot() if r.sample_count]

    def accepted_samples(self) -> list[tuple[tuple[tuple[str, str], ...], Sample]]:
        return [s for r in self.snapshot() if r.accepted for s in r.samples()]

    def accepted_series(self) -> list[Series]:
        return [s for r in self.snapshot() if r.accepted for s in r.series]

    def accepted_counts(self) -> Counter[tuple[Any, ...]]:
        """How often each (series, timestamp, value bits) was accepted."""
        return Counter((key, s.timestamp_ms, s.bits) for key, s in self.accepted_samples())

    async def until(self, condition: Callable[[RecordingReceiver], bool],
                    within_s: float = 10.0, what: str = "condition") -> None:
        deadline = time.monotonic() + within_s
        while not condition(self):
            self._fail_past(deadline, within_s, what)
            await asyncio.sleep(0.005)

    def wait_for(self, condition: Callable[[RecordingReceiver], bool],
                 within_s: float = 20.0, what: str = "condition") -> None:
        deadline = time.monotonic() + within_s
        while not condition(self):
            self._fail_past(deadline, within_s, what)
            time.sleep(0.01)

    def _fail_past(self, deadline: float, within_s: float, what: str) -> None:
        if time.monotonic() > deadline:
            raise AssertionError(f"receiver: {what} not met within {within_s} s; "
                                 f"saw {self.describe()}")

    def describe(self, requests: Iterable[Request] | None = None) -> str:
        rows = [f"#{r.index} {r.status or 'held'} {r.sample_count} samples"
                + (f" wire error {r.wire_error}" if r.wire_error else "")
                for r in (requests if requests is not None else self.snapshot())]
        return "; ".join(rows) or "no requests"

    # ------------------------------------------------------------------ serving
    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        request = Request(index=0, at=time.monotonic(), method=handler.command,
                          path=handler.path, body=body,
                          headers={k.lower(): v for k, v in handler.headers.items()})
        if body:
            try:
                request.series = decode_body(body)
            except WireError as exc:
                request.wire_error = str(exc)
        with self._lock:
            request.index = len(self.requests)
            self.requests.append(request)
            reply = self._script.popleft() if self._script else None
        if reply is None:
            reply = self.responder(request) if self.responder is not None else self.default
        if reply.hold and not self._closing:
            event = threading.Event()
            with self._lock:
                self._held.append(event)
            if not event.wait(HOLD_LIMIT_S):
                reply = Reply(503, b"held too long by the test receiver")
        request.status = reply.status
        try:
            handler.send_response(reply.status)
            for name, value in reply.headers:
                handler.send_header(name, value)
            if reply.status not in (204, 304) and reply.status >= 200:
                handler.send_header("Content-Length", str(len(reply.body)))
            handler.end_headers()
            if reply.body and reply.status not in (204, 304):
                handler.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the sender is gone (a test killed it): the answer reaches nobody, as meant
