"""A remote-write receiver that records what each request carried: its headers and its samples.

For what no real receiver on this machine can show: the tenant header (`X-Scope-OrgID`) a
multi-tenant receiver (Mimir, Cortex, a newer vmauth) routes on. It decodes every body with the
gateway's own wire decoder, so a body it cannot read is answered 400 and recorded as such.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from gateway.remote_write.wire import decode_write_request, decompress


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]  # names lower-cased
    series: list[tuple[dict[str, str], list[tuple[float, int]]]]  # (labels, [(value, ts ms)])
    status: int  # what it answered


class HeaderRecordingReceiver:
    """Answers 204 to every readable remote-write request; `requests` lists them in order."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    series = decode_write_request(decompress(body))
                    status = 204
                except ValueError:
                    series, status = [], 400
                with owner._lock:
                    owner.requests.append(Received(headers, series, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="header-recording-receiver")

    @property
    def remote_write_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/api/v1/write"

    def received(self) -> list[Received]:
        with self._lock:
            return list(self.requests)

    def samples(self, metric: str) -> dict[str, list[tuple[int, float]]]:
        """Samples of `metric` per device, as tests.support.receivers.vm_samples gives them."""
        out: dict[str, list[tuple[int, float]]] = {}
        for request in self.received():
            for labels, samples in request.series:
                if labels.get("__name__") == metric:
                    out.setdefault(labels["device_id"], []).extend(
                        (ts, value) for value, ts in samples)
        return out

    def __enter__(self) -> HeaderRecordingReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
