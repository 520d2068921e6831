"""A recording remote-write proxy: in front of VictoriaMetrics, notes when each request came
and when VM answered it, passes VM's answer back unchanged, and keeps the (compressed) bodies
for reading after the run, so decoding stays off the measured path.

Runs as threads of the benchmark's own process (a ThreadingHTTPServer); the gateway sends one
request at a time per endpoint, so it is never the queue.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from devstack import LOOPBACK
from gateway.remote_write.series import SeriesEncoder
from gateway.remote_write.wire import PROTOCOL_HEADERS, decompress

_FORWARDED = tuple(PROTOCOL_HEADERS)


@dataclass(frozen=True, slots=True)
class Request:
    received: float  # epoch: the whole body has been read
    answered: float  # epoch: VM's response is in
    status: int
    body: bytes  # as sent: snappy-compressed


class Recorder:
    def __init__(self, target_url: str) -> None:
        self.target_url = target_url
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._client = httpx.Client(timeout=60)
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the gateway's client expects

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                received = time.time()
                headers = {k: v for k in _FORWARDED if (v := self.headers.get(k))}
                response = recorder._client.post(recorder.target_url, content=body,
                                                  headers=headers)
                answered = time.time()
                with recorder._lock:
                    recorder.requests.append(Request(received, answered,
                                                     response.status_code, body))
                self.send_response(response.status_code)
                self.send_header("Content-Length", str(len(response.content)))
                self.end_headers()
                self.wfile.write(response.content)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # one line per request would be noise

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://{LOOPBACK}:{self._server.server_address[1]}/api/v1/write"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Recorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._client.close()


def _varint(data: bytes) -> int:
    value = 0
    for shift, byte in enumerate(data):
        value |= (byte & 0x7F) << (7 * shift)
        if not byte & 0x80:
            break
    return value


def sample_pattern(metric: str, device_template: str) -> re.Pattern[bytes]:
    """Matches one entry of `metric` for any device whose id is `device_template` with its
    digits (group 1) varying, as gateway.remote_write.series.SeriesEncoder encodes it; group 2
    is the 6-byte timestamp varint."""
    digits = re.search(rb"\d+", device_template.encode())
    assert digits is not None
    prefix = SeriesEncoder().series_prefix(device_template, metric, ())
    head, tail = prefix.split(digits.group(0), 1)
    width = len(digits.group(0))
    return re.compile(re.escape(head) + rb"(\d{" + str(width).encode() + rb"})"
                      + re.escape(tail) + rb"\x09.{8}\x10(.{6})", re.DOTALL)


def arrivals(requests: list[Request], pattern: re.Pattern[bytes]
             ) -> Iterator[tuple[bytes, int, Request]]:
    """(device digits, sample timestamp ms, request) of every matching entry of every
    accepted request, in arrival order."""
    for request in requests:
        if request.status // 100 != 2:
            continue
        for match in pattern.finditer(decompress(request.body)):
            yield match.group(1), _varint(match.group(2)), request
