"""A scripted front for a real remote-write receiver: answers with planned faults, else passes
requests through. The receiver behind it is real; only the failures are staged."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx


@dataclass(frozen=True)
class Fault:
    status: int
    body: str = ""
    retry_after: str | None = None  # the Retry-After header, verbatim


@dataclass(frozen=True)
class Seen:
    at: float  # time.monotonic() when the request arrived
    status: int  # what the gateway was answered
    forwarded: bool


class FaultyReceiver:
    def __init__(self, upstream_write_url: str) -> None:
        self.upstream = upstream_write_url
        self.faults: deque[Fault] = deque()
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._client = httpx.Client(timeout=30.0)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                arrived = time.monotonic()
                with owner._lock:
                    fault = owner.faults.popleft() if owner.faults else None
                if fault is not None:
                    self._answer(fault.status, fault.body.encode(), fault.retry_after)
                    owner._log(Seen(arrived, fault.status, forwarded=False))
                    return
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() in ("content-encoding", "content-type",
                                            "x-prometheus-remote-write-version")}
                upstream = owner._client.post(owner.upstream, content=body, headers=headers)
                self._answer(upstream.status_code, upstream.content, None)
                owner._log(Seen(arrived, upstream.status_code, forwarded=True))

            def _answer(self, status: int, body: bytes, retry_after: str | None) -> None:
                self.send_response(status)
                if retry_after is not None:
                    self.send_header("Retry-After", retry_after)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="faulty-receiver")

    @property
    def remote_write_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/api/v1/write"

    def plan(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    def pending(self) -> int:
        with self._lock:
            return len(self.faults)

    def _log(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)

    def __enter__(self) -> FaultyReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._client.close()
