"""The demo (`make demo`, i.e. `python -m devstack demo` from the checkout) starts the whole
stack; data reaches Prometheus, and every address it prints answers."""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.publisher import Publisher

pytestmark = pytest.mark.e2e

URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+")
READY_LINE = "Press Ctrl-C to stop everything."
START_S = 90.0


def _demo(workdir: Path, duration: float) -> list[str]:
    return [sys.executable, "-m", "devstack", "demo", "--workdir", str(workdir),
            "--devices", "3", "--interval", "1", "--duration", f"{duration:g}"]


def test_demo_runs_the_stack_and_fills_prometheus(tmp_path: Path) -> None:
    result = subprocess.run(_demo(tmp_path / "demo", 8), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Prometheus graph      http://127.0.0.1:" in result.stdout
    assert "/docs" in result.stdout
    assert "demo check: 3 devices" in result.stdout
    assert "fleetgate demo stopped." in result.stdout


def test_python_m_devstack_names_its_one_command(capsys: pytest.CaptureFixture[str]) -> None:
    from devstack.__main__ import main

    assert main([]) == 2
    assert "usage: python -m devstack demo" in capsys.readouterr().err
    assert main(["--help"]) == 0
    assert "make demo" in capsys.readouterr().out


class RunningDemo:
    """The demo as a child process, its stdout read by a thread (a line at a time)."""

    def __init__(self, workdir: Path) -> None:
        # --duration only bounds a demo this test failed to stop.
        self.process = subprocess.Popen(_demo(workdir, 300), stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def until(self, wanted: str, timeout: float) -> str:
        """The output up to and including the first line containing `wanted`."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"demo: no {wanted!r} within {timeout:.0f} s; output:\n"
                                     + "".join(self.output)) from None
            if line is None:
                raise AssertionError(f"demo exited ({self.process.wait()}) before {wanted!r}:"
                                     "\n" + "".join(self.output))
            self.output.append(line)
            if wanted in line:
                return "".join(self.output)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(90)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[RunningDemo]:
    running = RunningDemo(tmp_path / "demo")
    try:
        yield running
    finally:
        running.stop()


def _open_in_browser_terms(client: httpx.Client, url: str) -> str:
    """What a browser would get for `url`, redirects followed; '' if that is a non-empty 200."""
    try:
        response = client.get(url)
    except httpx.HTTPError as exc:
        return f"{url}: {exc!r}"
    if response.status_code != 200 or not response.content:
        hops = " -> ".join(str(r.url) for r in [*response.history, response])
        return f"{url}: {response.status_code} with {len(response.content)} bytes ({hops})"
    return ""


def test_every_address_the_demo_prints_answers(demo: RunningDemo) -> None:
    """Parsed from the demo's own output, so an address added to it is checked too. Web pages
    must answer 200 with a body after redirects, as in a browser. The Swagger page (/docs)
    loads its scripts from a CDN, which a machine without internet (like this one) cannot
    reach: for it, 200 of the HTML is the bar. The MQTT broker must accept a connection."""
    printed = demo.until(READY_LINE, START_S)
    urls = URL.findall(printed)
    web = [u for u in urls if u.startswith(("http://", "https://"))]
    mqtt = [u for u in urls if u.startswith("mqtt://")]
    assert len(web) >= 7 and mqtt, f"expected the demo's addresses in:\n{printed}"
    assert set(urls) == {*web, *mqtt}, f"an address this test cannot open: {urls}"

    with httpx.Client(follow_redirects=True, timeout=10.0) as client:
        failures = [f for f in (_open_in_browser_terms(client, u) for u in web) if f]
    assert failures == [], "\n".join(failures)
    for url in mqtt:
        Publisher(url, client_id="demo-address-test").close()  # waits for the CONNACK

    assert demo.stop() == 0, "".join(demo.output)
    demo.until("fleetgate demo stopped.", 5)
